"""CPU targets: archspec names in, compiler flags out.

Every CPU decision goes through archspec: the names users type, the flags for the
toolchain's version, and the reason a target is not possible. Detection of the host
(``native``) uses archspec's data and order, but matches only the features that change
code generation (:func:`detect`): hypervisors hide flags that no compiler uses, and
archspec's own ``host()`` then names a Zen 4 VM without ``pku`` ``x86_64_v4``. clang's
own ``-march=native`` is not used: LLVM 16 falls back to plain ``x86-64`` for a CPU it
does not know, silently, and names a CPU by its model number, which VMs change.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field

import archspec.cpu

from bakery.errors import BakeryError


@dataclass(frozen=True)
class Target:
    name: str                     # archspec name actually used (after clamping)
    requested: str                # what the user asked for ("native", "zen5", ...)
    family: str                   # x86_64, aarch64, ...
    flags: tuple[str, ...]        # e.g. ("-march=x86-64-v4",), ("-march=znver4", "-mtune=znver4")
    notes: tuple[str, ...] = field(default=())

    @property
    def cpu(self) -> str | None:
        return _flag_value(self.flags, "-march=") or _flag_value(self.flags, "-mcpu=")

    @property
    def tune(self) -> str | None:
        """The tuning the flags ask for; written into functions' "tune-cpu" at bake.

        None when the flags name none (``-march=x86-64-v4`` alone): the bake then writes no
        ``tune-cpu`` and the CPU's own tuning applies, as in a from-source build with those flags.
        """
        return _flag_value(self.flags, "-mtune=") or _flag_value(self.flags, "-mcpu=")

    def to_json(self) -> dict:
        return {"name": self.name, "requested": self.requested, "family": self.family,
                "flags": list(self.flags), "notes": list(self.notes)}


def _flag_value(flags, prefix: str) -> str | None:
    for f in flags:
        if f.startswith(prefix):
            return f[len(prefix):]
    return None


def known_names() -> list[str]:
    return sorted(archspec.cpu.TARGETS)


def lookup(name: str) -> archspec.cpu.Microarchitecture:
    if name == "native":
        return archspec.cpu.TARGETS[native().name]
    try:
        return archspec.cpu.TARGETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, known_names(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'bakery targets' to list them"
        raise BakeryError(f"unknown target {name!r}: not an archspec microarchitecture", hint) from None


# archspec's clang flags for the x86-64 levels are "-march=x86-64-vN -mtune=generic"; a user
# types "-march=x86-64-vN" alone, and with LLVM 16 the two differ. Without -mtune the level's
# own tuning applies (x86-64-v4: Skylake-AVX512's, which prefers 256-bit vectors; v3: Haswell's),
# while generic tuning lets the vectorizer fill 512-bit zmm registers: a stencil kernel baked for
# x86_64_v4 with archspec's flags ran 1.19x slower on a Zen 4 than `clang -O2 -march=x86-64-v4`.
# So the levels bake with what a user would type (README, "How bake works"). The baseline keeps
# archspec's "-march=x86-64 -mtune=generic": that is what plain `clang -O2` does.
PLAIN_MARCH = ("x86_64_v2", "x86_64_v3", "x86_64_v4")


def compiler_flags(uarch: archspec.cpu.Microarchitecture, compiler_version: str
                   ) -> tuple[archspec.cpu.Microarchitecture, tuple[str, ...], list[str]]:
    """(the target used, its clang flags, notes): ``uarch`` or its closest ancestor that clang
    ``compiler_version`` supports."""
    notes: list[str] = []
    for candidate in [uarch, *uarch.ancestors]:
        try:
            flags = candidate.optimization_flags("clang", compiler_version).split()
        except archspec.cpu.UnsupportedMicroarchitecture as e:
            if candidate is uarch:
                notes.append(f"clang {compiler_version} cannot target {uarch.name} ({_reason(e)})")
            continue
        if candidate.name in PLAIN_MARCH:
            flags = [f for f in flags if f != "-mtune=generic"]
        if candidate is not uarch:
            notes.append(f"using its closest supported ancestor {candidate.name}")
        return candidate, tuple(flags), notes
    raise BakeryError(f"clang {compiler_version} supports neither {uarch.name} nor any of its ancestors")


def resolve(name: str, *, compiler_version: str, family: str) -> Target:
    """archspec target + flags for clang ``compiler_version``, clamped to what it supports."""
    uarch = lookup(name)
    if uarch.family.name != family:
        raise BakeryError(
            f"target {uarch.name} is {uarch.family.name}, but this IR is {family}",
            "bitcode is specific to an ISA: bake it from an IR image built for that platform",
        )
    notes: list[str] = native().notes() if name == "native" else []
    used, flags, clamped = compiler_flags(uarch, compiler_version)
    return Target(used.name, name, family, flags, tuple(notes + clamped))


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text[text.find("[") + 1 : text.rfind("]")] if "[" in text else text


# -- native: the host, matched on the features that change code generation -------------------

# Flags (archspec's spelling, /proc/cpuinfo's) that x86 targets list but that code generation
# never uses, with what they are. Two kinds: CPU controls that are no instruction at all, and
# system or OS-mediated instructions that LLVM emits only for their own intrinsics. clang
# refuses such an intrinsic in a function whose target lacks the feature, so IR captured for a
# generic CPU cannot call one (a function's own target attribute is kept as it is at bake), and
# a bake for a target that lists them emits none. Hypervisors hide exactly these. Compute
# extensions (AES, SHA, RDRAND, GFNI, VP2INTERSECT, ...) are always required, even the ones
# only intrinsics reach: code may choose them with #ifdef in a unit captured per level.
NOT_CODEGEN: dict[str, str] = {
    "flush_l1d": "the L1D flush control, an MSR for the kernel: no instruction",
    "tsc_adjust": "the TSC adjust MSR: no instruction",
    "pku": "RDPKRU/WRPKRU (memory protection keys, enabled by the OS)",
    "waitpkg": "UMONITOR/UMWAIT/TPAUSE",
    "clzero": "CLZERO",
    "cldemote": "CLDEMOTE",
    "movdiri": "MOVDIRI",
    "movdir64b": "MOVDIR64B",
    "serialize": "SERIALIZE",
    "tsxldtrk": "XSUSLDTRK/XRESLDTRK",
    "enqcmd": "ENQCMD (device work submission)",
    "uintr": "user interrupts",
    "hreset": "HRESET (privileged)",
    "pconfig": "PCONFIG (privileged)",
    "sgx": "SGX enclave instructions",
    "wbnoinvd": "WBNOINVD (privileged)",
    "invpcid": "INVPCID (privileged)",
    "rdpid": "RDPID",
    "rdpru": "RDPRU",
    "mwaitx": "MONITORX/MWAITX",
    "lwp": "lightweight profiling",
    "user_shstk": "CET shadow stack instructions (enabled by the OS)",
    "shstk": "CET shadow stack instructions (enabled by the OS)",
    "fsgsbase": "RD/WR FS/GS BASE (enabled by the OS)",
    "xsave": "XSAVE/XRSTOR (state save)",
    "xsaveopt": "XSAVEOPT (state save)",
    "xsavec": "XSAVEC (state save)",
    "xsaves": "XSAVES (privileged state save)",
    "clflushopt": "CLFLUSHOPT (cache line flush)",
    "clwb": "CLWB (cache line write-back)",
    "amx_tile": "AMX tile instructions (tile state enabled per process by the OS)",
    "amx_int8": "AMX tile instructions (tile state enabled per process by the OS)",
    "amx_bf16": "AMX tile instructions (tile state enabled per process by the OS)",
    "amx_fp16": "AMX tile instructions (tile state enabled per process by the OS)",
    "ptwrite": "PTWRITE (processor trace; no /proc/cpuinfo flag)",
    "kl": "Key Locker (no /proc/cpuinfo flag)",
    "widekl": "Key Locker (no /proc/cpuinfo flag)",
}

# LLVM x86 feature -> the /proc/cpuinfo flags that show it (any one); the others are spelt alike.
# A feature clang turns on that no flag shows counts as missing: an unknown feature is never
# taken on trust.
_CPUINFO_OF_LLVM: dict[str, tuple[str, ...]] = {
    "64bit": ("lm",), "x87": ("fpu",), "3dnowa": ("3dnowext",), "sse3": ("sse3", "pni"),
    "sse4.1": ("sse4_1",), "sse4.2": ("sse4_2",), "crc32": ("sse4_2",), "sahf": ("lahf_lm",),
    "lzcnt": ("abm",), "bmi": ("bmi1",), "pclmul": ("pclmulqdq",), "prfchw": ("3dnowprefetch",),
    "rdrnd": ("rdrand",), "sha": ("sha_ni",), "shstk": ("user_shstk", "shstk"), "evex512": ("avx512f",),
    "prefetchwt1": ("prefetchwt1", "avx512pf"),
    "avx512bf16": ("avx512_bf16",), "avx512bitalg": ("avx512_bitalg",), "avx512fp16": ("avx512_fp16",),
    "avx512vbmi2": ("avx512_vbmi2",), "avx512vnni": ("avx512_vnni",), "avx512vpopcntdq": ("avx512_vpopcntdq",),
    "avx512vp2intersect": ("avx512_vp2intersect",), "avxvnni": ("avx_vnni",), "avxifma": ("avx_ifma",),
    "avxneconvert": ("avx_ne_convert",), "avxvnniint8": ("avx_vnni_int8",), "avxvnniint16": ("avx_vnni_int16",),
    "amx-tile": ("amx_tile",), "amx-int8": ("amx_int8",), "amx-bf16": ("amx_bf16",), "amx-fp16": ("amx_fp16",),
}


# Features clang 16's -march=<target> turns on that archspec does not list for it, and that code
# generation uses (the x86-64 baseline and NOT_CODEGEN left out): LLVM emits PREFETCHW for a
# write prefetch, AVX512-FP16 for _Float16 arithmetic. Required of the host as archspec's own,
# for the target and for every ancestor, so that detection without a clang is as safe as with
# one (with one, each candidate's own flags are asked too); tests/unit/test_target.py checks
# the table against clang 16. (mic_knl's PREFETCHWT1 has no /proc/cpuinfo flag: its AVX512PF,
# which archspec lists, comes only with it.)
CLANG_EXTRA: dict[str, tuple[str, ...]] = {
    "nocona": ("cx16",), "core2": ("cx16", "lahf_lm"), "k10": ("3dnowprefetch", "lahf_lm", "popcnt", "pni"),
    "broadwell": ("3dnowprefetch",), "bulldozer": ("3dnowprefetch",),
    "sapphirerapids": ("avx512_fp16", "avx_vnni"), "excavator": ("rdrand",),
    "zen": ("3dnowprefetch", "adx", "rdrand", "sha_ni"),
}


@dataclass(frozen=True)
class Candidate:
    """One target of the host's family and vendor (or generic), as :func:`detect` judged it."""

    name: str
    missing: tuple[str, ...] = ()     # codegen features the host lacks: never this target
    ignored: tuple[str, ...] = ()     # flags the host lacks that code generation never uses
    compiler: str = ""                # what the clang check said, when it ran ("" it did not)
    verdict: str = ""                 # chosen | ok | no

    def line(self) -> str:
        text = f"{self.name:<16} {self.verdict}"
        if self.ignored:
            text += f"; ignored: {', '.join(self.ignored)}"
        return text + (f"; {self.compiler}" if self.compiler else "")


@dataclass(frozen=True)
class Detection:
    """What ``native`` is on a host, and why (``bakery targets --why native``)."""

    name: str                         # the choice, an archspec name
    archspec: str                     # archspec's own host(): every listed flag required
    family: str
    vendor: str
    flags: int                        # how many flags the host shows
    ignored: tuple[str, ...] = ()     # of the choice: host-missing flags no codegen uses
    candidates: tuple[Candidate, ...] = ()
    others: tuple[str, ...] = ()      # vendors whose targets were not considered
    compiler: str | None = None       # "clang 16.0.6": the candidates' -march features were checked too

    def notes(self) -> list[str]:
        if self.name == self.archspec and not self.ignored:
            return [f"native CPU detected by archspec: {self.name}"]
        out = [f"native CPU: {self.name}, matched on the features code generation uses "
               f"(archspec's own detection: {self.archspec})"]
        if self.ignored:
            out.append(f"ignored flags this host lacks, which code generation never uses: {', '.join(self.ignored)}")
        return out

    def explain(self) -> list[str]:
        lines = [f"native: {self.name}",
                 f"  host: {self.vendor} {self.family}, {self.flags} flags in /proc/cpuinfo",
                 f"  archspec's own detection: {self.archspec} (it requires every flag a target lists)"]
        if self.family != "x86_64":
            lines.append(f"  {self.family}: archspec's own matching (the flags no codegen uses are x86's)")
        elif self.compiler:
            lines.append(f"  checked twice: archspec's features, and the features {self.compiler} turns on "
                         "for each candidate's flags (its IR's target-features)")
        else:
            lines.append("  checked on archspec's features only (no clang here to ask for its -march features)")
        if self.candidates:
            skipped = f"; not considered: the targets of {', '.join(self.others)}" if self.others else ""
            lines.append(f"  candidates, most specific first ({self.vendor} or generic{skipped}):")
            lines += [f"    {c.line()}" for c in self.candidates]
        if self.ignored:
            lines.append(f"  ignored (not in /proc/cpuinfo here; code generation never uses them): {', '.join(self.ignored)}")
            lines += [f"    {f}: {NOT_CODEGEN[f]}" for f in self.ignored if f in NOT_CODEGEN]
        lines.append(f"  choice: {self.name}")
        return lines


def codegen_features(t) -> set[str]:
    """The features of an archspec target that code generation may use: archspec's and
    :data:`CLANG_EXTRA` (its own and its ancestors'), all but :data:`NOT_CODEGEN`."""
    extra = {f for a in [t, *t.ancestors] for f in CLANG_EXTRA.get(a.name, ())}
    return (set(t.features) | extra) - NOT_CODEGEN.keys()


def _order(t) -> tuple[int, int]:
    """archspec's host() order: the deepest in the tree, then the most features."""
    return len(t.ancestors), len(t.features)


def _pick(cands: list, family: str, ok, cpu_part: str = ""):
    """archspec's host() choice among ``cands`` (most specific first) for the predicate ``ok``:
    the best generic level, then the most specific target below it (of the CPU part, if any)."""
    best_generic = next((c for c in cands if c.vendor == "generic" and ok(c)), archspec.cpu.TARGETS[family])
    if cpu_part and any(c.cpu_part == cpu_part and ok(c) for c in cands):
        cands = [c for c in cands if c.cpu_part == cpu_part]
    return next((c for c in cands if c > best_generic and ok(c)), best_generic)


def _shown(names: tuple[str, ...], host: set[str]) -> bool:
    return any(n in host for n in names)


@functools.cache
def _clang_features(clang: str, flags: tuple[str, ...]) -> frozenset[str] | None:
    """The features clang turns on for ``flags``: the target-features of an empty function's IR
    (``clang -###`` gives only -target-cpu for an -march). None when clang cannot say."""
    from bakery import proc

    try:
        out = proc.run([clang, "-S", "-emit-llvm", "-o", "-", "-x", "c", "-", *flags],
                       input="void f(void) {}\n", timeout=60).stdout
    except (BakeryError, OSError):
        return None
    m = re.search(r'"target-features"="([^"]*)"', out)
    return frozenset(f[1:] for f in m.group(1).split(",") if f.startswith("+")) if m else frozenset()


def _clang_check(t, host: set[str], clang: tuple[str, str]) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(missing, ignored, what to say) for the features clang turns on for ``t``'s bake flags."""
    path, version = clang
    used, flags, _ = compiler_flags(t, version)
    march = " ".join(flags)
    feats = _clang_features(path, flags)
    if feats is None:
        return (), (), f"clang {version} could not be asked about {march}: archspec's features only"
    missing: set[str] = set()
    ignored: set[str] = set()
    for f in feats:
        names = _CPUINFO_OF_LLVM.get(f, (f,))
        if _shown(names, host):
            continue
        ignorable = [n for n in names if n in NOT_CODEGEN]
        (ignored if ignorable else missing).add(ignorable[0] if ignorable else names[0])
    if missing:
        return tuple(sorted(missing)), tuple(sorted(ignored)), \
            f"clang {version} {march} turns on {', '.join(sorted(missing))}, which this host lacks"
    return (), tuple(sorted(ignored)), f"clang {version} {march}: ok"


def detect(features, vendor: str, family: str, *, cpu_part: str = "",
           clang: tuple[str, str] | None = None) -> Detection:
    """The most specific archspec target whose codegen-relevant features a host has.

    ``features``/``vendor``: the host's /proc/cpuinfo flags and vendor_id. A candidate is a
    target of the family whose vendor is the host's or generic; it qualifies when the host has
    every feature archspec lists for it except :data:`NOT_CODEGEN`, and, with ``clang`` (path,
    version), every feature that clang turns on for the target's bake flags, except those. The
    choice follows archspec's own order (the best generic level, then the most specific target
    below it). Only x86 has flags no codegen uses; other families get archspec's own matching.
    """
    from archspec.cpu import detect as asdetect

    info = asdetect.partial_uarch(vendor=vendor, features=set(features), cpu_part=cpu_part)
    host = info.features  # archspec adds sse3 for ssse3 (Linux says pni)
    targets = sorted((t for t in archspec.cpu.TARGETS.values() if t.family.name == family), key=_order, reverse=True)
    check = asdetect.COMPATIBILITY_CHECKS.get(family, lambda i, t: t.name == family)
    theirs = _pick([t for t in targets if check(info, t)], family, lambda t: True, cpu_part)
    considered = [t for t in targets if t.vendor in (info.vendor, "generic")]
    others = tuple(sorted({t.vendor for t in targets} - {info.vendor, "generic"}))
    if family != "x86_64":
        rows = tuple(Candidate(t.name, tuple(sorted(t.features - host)),
                               verdict="chosen" if t is theirs else "ok" if check(info, t) else "no")
                     for t in considered)
        return Detection(theirs.name, theirs.name, family, info.vendor, len(features), (), rows, others, None)

    static = {t.name: (tuple(sorted(codegen_features(t) - host)),
                       tuple(sorted((t.features & NOT_CODEGEN.keys()) - host))) for t in considered}
    # A target that the host matches only by ignoring flags must add code generation over each of
    # its parents: a Broadwell lacks Skylake's CLFLUSHOPT/XSAVEC/XSAVES, and Skylake differs from
    # it in nothing else, so it stays a broadwell (its tuning) rather than a skylake.
    alike = {t.name: next((p.name for p in t.parents if codegen_features(p) >= codegen_features(t)), None)
             for t in considered if static[t.name][1]}
    asked: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {}

    def ok(t) -> bool:
        if static[t.name][0] or alike.get(t.name):
            return False
        if clang is None:
            return True
        if t.name not in asked:
            asked[t.name] = _clang_check(t, host, clang)
        return not asked[t.name][0]

    chosen = _pick(considered, family, ok)
    best_generic = next((c for c in considered if c.vendor == "generic" and ok(c)), archspec.cpu.TARGETS[family])
    cands: list[Candidate] = []
    for t in considered:
        missing, ignored = static[t.name]
        said = ""
        if t.name in asked:
            c_missing, c_ignored, said = asked[t.name]
            missing = tuple(sorted(set(missing) | set(c_missing)))
            ignored = tuple(sorted(set(ignored) | set(c_ignored)))
        if t is chosen:
            verdict = "chosen"
        elif missing:
            verdict = f"no: lacks {', '.join(missing)}"
        elif alike.get(t.name):
            verdict = (f"no: it differs from {alike[t.name]} only in flags this host lacks "
                       f"({', '.join(static[t.name][1])}), so this is a {alike[t.name]}")
        elif t is best_generic:
            verdict = "ok: the most specific generic level"
        elif t.vendor != "generic" and not t > best_generic:
            verdict = f"ok, but not a descendant of {best_generic.name}"
        else:
            verdict = "ok, less specific"
        cands.append(Candidate(t.name, missing, ignored, said, verdict))
    ignored = next(c.ignored for c in cands if c.name == chosen.name)
    return Detection(chosen.name, theirs.name, family, info.vendor, len(features), ignored, tuple(cands), others,
                     f"clang {clang[1]}" if clang else None)


def _host_clang() -> tuple[str, str] | None:
    """The toolchain's clang (path, version), if this machine has one."""
    try:
        from bakery import toolchain

        tc = toolchain.find()
        return tc.clang, tc.version
    except (BakeryError, OSError):
        return None


@functools.cache
def native() -> Detection:
    """This host's detection, once per process: archspec reads /proc/cpuinfo, and clang (when
    there is one) is asked about the one or two candidates that decide."""
    from archspec.cpu import detect as asdetect

    family = asdetect._machine()
    if family not in archspec.cpu.TARGETS:
        host = archspec.cpu.host()
        return Detection(host.name, host.name, host.family.name, host.vendor, 0)
    info = asdetect.detected_info()
    return detect(info.features, info.vendor, family, cpu_part=info.cpu_part, clang=_host_clang())


def missing_on_host(name: str) -> list[str]:
    """The features code generation may use for archspec target ``name`` that this host's
    /proc/cpuinfo lacks ([] for another ISA family: that is refused elsewhere)."""
    from archspec.cpu import detect as asdetect

    t = lookup(name)
    if t.family.name != asdetect._machine():
        return []
    return sorted(codegen_features(t) - set(asdetect.detected_info().features))


# ISA levels a target-sensitive unit is captured at (lowest first).
DEFAULT_LEVELS = {
    "x86_64": ["x86_64", "x86_64_v2", "x86_64_v3", "x86_64_v4"],
    "aarch64": ["aarch64", "armv8.1a", "armv8.2a", "armv8.4a", "neoverse_v1"],
}


def capture_levels(names: list[str] | None, *, compiler_version: str, family: str) -> list[Target]:
    """Resolved levels, lowest first (archspec's compatibility order), duplicates after clamping dropped."""
    chosen = names or DEFAULT_LEVELS.get(family, [])
    resolved: dict[str, Target] = {}
    for name in chosen:
        t = resolve(name, compiler_version=compiler_version, family=family)
        resolved.setdefault(t.name, t)
    return sorted(resolved.values(), key=lambda t: len(archspec.cpu.TARGETS[t.name].ancestors))


def satisfies(target_name: str, level_name: str) -> bool:
    """Can code built for ``level_name`` run on ``target_name``?

    archspec's order first (an ancestor always fits); across vendors (a haswell
    capture on zen4) the level's features must all be the target's.
    """
    level, target = archspec.cpu.TARGETS[level_name], archspec.cpu.TARGETS[target_name]
    if level <= target:
        return True
    return level.family == target.family and level.features <= target.features


def best_level(target_name: str, levels: list[str]) -> str | None:
    """The highest of ``levels`` (lowest first) that the target satisfies."""
    ok = [lv for lv in levels if lv in archspec.cpu.TARGETS and satisfies(target_name, lv)]
    return ok[-1] if ok else None
