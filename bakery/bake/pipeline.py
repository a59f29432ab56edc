"""Bake: finish a captured build for one CPU.

For every module: check its digest, rewrite the per-function target attributes
(they override ``-march`` otherwise, and the result would silently stay
generic), run the full optimization pipeline and codegen with the target known.
Then replay the links with the preserved link lines. No shell is ever used, and
the plan was validated (``plan.load``, which returns it typed) before anything here runs.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from bakery import passes, proc
from bakery import plan as planmod
from bakery.bake import bitcode as bitcodemod
from bakery.bake import profile as profilemod
from bakery.bake.profile import Profile
from bakery.bake.retarget import asm_problem, retarget_ir
from bakery.bake.warm import WarmTools
from bakery.errors import BakeryError, PlanRefused
from bakery.plan.model import Archive, FileRef, Flag, LinkRef, Module, ModuleRef, ObjectRef, Plan
from bakery.platforms import usable_cpus
from bakery.target import Target
from bakery.toolchain import Toolchain

log = logging.getLogger(__name__)

LTO_MODES = ("none", "thin", "full")

@dataclass
class BakeResult:
    target: Target
    outputs: dict[str, str] = field(default_factory=dict)   # install name -> path
    seconds: float = 0.0
    modules: int = 0
    lto: str = "none"
    variants: dict[str, str] = field(default_factory=dict)  # source -> level of the capture used
    timings: Timings | None = None
    profile: dict | None = None   # the profile baked with: its file, digest, functions it did not fit

    def to_json(self) -> dict:
        out = {"target": self.target.to_json(), "outputs": self.outputs, "seconds": round(self.seconds, 3),
               "modules": self.modules, "lto": self.lto, "variants": self.variants}
        if self.profile is not None:
            out["profile"] = self.profile
        if self.timings is not None:
            out["timings"] = self.timings.to_json()
        return out


PHASES = ("verify", "scan", "disassemble", "rewrite", "optimize", "compile", "cached")


class Timings:
    """Where a bake's time goes: per phase summed over modules (CPU-seconds of the workers),
    the wall time of the module stage and of the links, the slowest modules, the object cache."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.per_module: dict[str, float] = {}
        self.wall: dict[str, float] = {"modules": 0.0, "links": 0.0}
        self.links: dict[str, float] = {}
        self.cache: dict[str, int] | None = None
        self.warm_tools: dict | None = None   # bakery.bake.warm: tool runs forked, servers started
        self.profile_misses = 0   # functions a profile-guided bake found no (fitting) profile for
        self.plain_modules: set[str] = set()  # compiled with no asm and no -m feature flags (bakery.bake.isacheck)

    def add(self, label: str, spent: dict[str, float]) -> None:
        with self.lock:
            for k, v in spent.items():
                self.phases[k] += v
            self.per_module[label] = sum(spent.values())

    def to_json(self) -> dict:
        slowest = sorted(self.per_module.items(), key=lambda kv: -kv[1])[:5]
        out = {"phases": {k: round(v, 3) for k, v in self.phases.items()},
               "wall": {k: round(v, 3) for k, v in self.wall.items()},
               "links": {k: round(v, 3) for k, v in self.links.items()},
               "slowest_modules": [{"module": k, "seconds": round(v, 3)} for k, v in slowest]}
        if self.cache is not None:
            out["object_cache"] = self.cache
        if self.warm_tools is not None:
            out["warm_tools"] = self.warm_tools
        return out


def check_toolchain(plan: Plan, toolchain: Toolchain, target: Target) -> None:
    tc = plan.toolchain
    if tc.llvm_major > toolchain.major:
        raise BakeryError(
            f"the bitcode was made by LLVM {tc.llvm_major} and LLVM {toolchain.major} cannot read it",
            f"bake with LLVM {tc.llvm_major} or newer (BAKERY_LLVM_VERSION), e.g. inside the IR image")
    if tc.family != target.family:
        raise BakeryError(f"this plan's IR is {tc.family}, target {target.name} is {target.family}")


def bake(bundle: Path, plan: Plan, toolchain: Toolchain, target: Target, output: Path, *,
         jobs: int = 0, lto: str = "none", keep: bool = False, cache: Path | None = None,
         profile: Profile | None = None, isa_check: bool = True) -> BakeResult:
    """Bake ``bundle`` for ``target`` into ``output``. ``cache``: a folder whose object cache
    (:mod:`bakery.bake.objcache`) gives modules compiled before with the same bitcode, flags,
    target and toolchain, and keeps the new ones. ``isa_check``: refuse outputs with instructions
    the target lacks (:mod:`bakery.bake.isacheck`) before anything is written to ``output``."""
    if lto not in LTO_MODES:
        raise BakeryError(f"--lto {lto!r}: choose one of {', '.join(LTO_MODES)}")
    toolchain = toolchain.for_triple(plan.toolchain.triple)  # off-node: bake another ISA's IR
    check_toolchain(plan, toolchain, target)
    jobs = jobs or usable_cpus()
    t0 = time.monotonic()
    for note in target.notes:
        log.info(f"bake: {note}")
    log.info(f"bake: {plan.app.name} {plan.app.version} for {target.name} "
             f"({' '.join(target.flags)}), {len(plan.modules)} modules, lto={lto}, jobs={jobs}")
    work = Path(tempfile.mkdtemp(prefix="bakery-bake-"))
    try:
        variants: dict[str, str] = {}
        timings = Timings()
        objects = None
        if cache is not None:
            from bakery.bake.objcache import ObjectCache

            objects = ObjectCache(cache, toolchain)
        t1 = time.monotonic()
        if profile is not None and lto != "none":
            raise BakeryError("a profile-guided bake is per module: --lto none")
        warm = WarmTools.for_bake(toolchain.clang, work, (toolchain.clang, toolchain.tool("opt"),
                                                           toolchain.tool("llvm-dis"), toolchain.tool("llvm-ar")),
                                  len(plan.modules))
        run = warm.run if warm is not None else proc.run
        try:
            objs = _bake_modules(bundle, plan, toolchain, target, work, jobs, lto, variants, timings, objects,
                                 profile, run)
            t2 = time.monotonic()
            outs = _link_all(bundle, plan, toolchain, target, work, objs, jobs, lto, timings, profile, run)
        finally:
            if warm is not None:
                timings.warm_tools = warm.close()
        timings.wall = {"modules": t2 - t1, "links": time.monotonic() - t2}
        if isa_check:
            from bakery.bake import isacheck

            timings.wall["isa_check"] = isacheck.check(bundle, plan, toolchain, target, outs, objs,
                                                       plain=timings.plain_modules).seconds
        if objects is not None:
            timings.cache = {"hits": objects.hits, "misses": objects.misses}
            log.info(f"bake: object cache {cache}: {objects.hits} modules reused, {objects.misses} compiled")
        output.mkdir(parents=True, exist_ok=True)
        if profile is not None and profile.mode == "use":
            note = f"bake: with the profile {profile.path}; {timings.profile_misses} functions it has no record of"
            if timings.profile_misses > profilemod.MISSES_WARN:
                log.warning(note + ": was it made on this IR? ('bakery profile' makes a new one)")
            else:
                log.info(note)
        result = BakeResult(target, seconds=0.0, modules=len(plan.modules), lto=lto, variants=variants,
                            timings=timings)
        if profile is not None:
            result.profile = {"mode": profile.mode, "path": str(profile.path or ""), "digest": profile.digest,
                              "functions_without_profile": timings.profile_misses}
        for name, link in plan.installs():  # a link's "also" names are copies: never a symlink here
            dest = output / name
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copy2(outs[link.id], tmp)
            os.replace(tmp, dest)  # a reader never sees half a binary
            result.outputs[name] = str(dest)
        result.seconds = time.monotonic() - t0
        log.info(f"bake: wrote {', '.join(result.outputs)} to {output} in {result.seconds:.1f}s")
        return result
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.info(f"bake: work tree kept in {work}")


def choose_variant(module: Module, target: Target) -> str | None:
    """The highest level this unit was captured at that the target satisfies
    (None: the generic capture)."""
    from bakery.target import best_level

    levels = [v.level for v in module.variants]
    return best_level(target.name, levels) if levels else None


def _bake_modules(bundle: Path, plan: Plan, toolchain: Toolchain, target: Target, work: Path, jobs: int, lto: str,
                  variants: dict[str, str], timings: Timings, objects=None,
                  profile: Profile | None = None, run=proc.run) -> dict[str, Path]:
    """``run``: proc.run, or a WarmTools' run (bakery.bake.warm) for the per-module tools."""
    (work / "obj").mkdir()
    dis = toolchain.tool("llvm-dis")
    preserve = plan.preserve.flags
    lto_flag = {"none": [], "thin": ["-flto=thin"], "full": ["-flto=full"]}[lto]
    opt = toolchain.tool("opt")

    def one(sha: str, m: Module) -> Path:
        path, digest = m.path, sha
        level = choose_variant(m, target)
        if level:
            v = m.variant(level)
            path, digest = v.path, v.sha256
            chosen[m.label] = level
        spent: dict[str, float] = {}
        t = time.perf_counter()
        # The bitcode path compiles the bytes read here; the text path has llvm-dis read the file.
        candidate = _bitcode_path_possible(m, target, lto_flag)
        if candidate:
            bc, whole = planmod.read_verified(bundle, path, digest)
        else:
            bc, whole = planmod.verify_file(bundle, path, digest), None
        spent["verify"] = time.perf_counter() - t
        out = work / "obj" / f"{sha}.o"
        flags = [*toolchain.cross_flags, "-w", *m.flags, *preserve, *target.flags, *lto_flag]
        halves = passes.halves(toolchain, passes.split_level(m.flags) or "") \
            if m.stage == "simplified" and not lto_flag else None
        key = objects.key(digest, [target.tune or "", *flags, *(_split_key(halves) if halves else []),
                                   *(profile.key() if profile else [])]) if objects is not None else ""
        if objects is not None:
            t = time.perf_counter()
            if (hit := objects.get(key, out)) is not None:
                if hit.get("plain") is True:
                    with timings.lock:
                        timings.plain_modules.add(sha)
                spent["cached"] = time.perf_counter() - t
                timings.add(m.label, spent)
                return out
        # cwd: the work tree, so that nothing relative resolves against the caller's folder.
        data = _plain_bitcode(m, whole, spent) if whole is not None else None
        if data is None:  # the text path: llvm-dis, the checks, the attribute rewrite
            t = time.perf_counter()
            text = run([dis, str(bc), "-o", "-"], cwd=work).stdout
            spent["disassemble"] = time.perf_counter() - t
            t = time.perf_counter()
            why = asm_problem(text)  # the very text clang compiles below
            if why:
                raise PlanRefused(f"plan refused: module {m.label}: {why}")
            text, _ = retarget_ir(text, target.tune, untargeted=m.untargeted)
            spent["rewrite"] = time.perf_counter() - t
        source: str | bytes = text if data is None else data  # IR text, or the very bitcode checked
        plain = not _feature_flags(m.flags) and (data is not None or not _HAS_ASM.search(text))
        if plain:
            with timings.lock:
                timings.plain_modules.add(sha)
        t = time.perf_counter()
        if halves is None:
            # The whole pipeline and codegen (pre-optimization IR, an LTO bake, or a toolchain
            # whose halves do not remake -O2/-O3: simplified IR is then simplified again).
            run([toolchain.clang, "-c", "-x", "ir", "-", "-o", str(out), *flags,
                 *(profile.clang_flags() if profile else [])], input=source, cwd=work, text=data is None)
        else:
            # The capture ran the first half: the target's half, then codegen alone.
            half = out.with_suffix(".bc")
            machine = passes.machine(toolchain, tuple(f for f in flags if f.startswith("-m")))
            cp = run(halves.finish_argv(opt, "-", str(half), machine,
                                        head=profile.head_passes() if profile else (),
                                        extra=profile.opt_options() if profile else ()),
                     input=source, cwd=work, text=data is None)
            if profile is not None and profile.mode == "use":
                misses = profilemod.mismatches(cp.stderr if isinstance(cp.stderr, str)
                                               else (cp.stderr or b"").decode(errors="replace"))
                with timings.lock:
                    timings.profile_misses += misses
            spent["optimize"] = time.perf_counter() - t
            t = time.perf_counter()
            run([toolchain.clang, "-c", "-x", "ir", str(half), "-o", str(out), "-Xclang", "-disable-llvm-passes",
                 *flags], cwd=work)
            half.unlink()
        spent["compile"] = time.perf_counter() - t
        if objects is not None:
            objects.put(key, out, plain=plain)
        timings.add(m.label, spent)
        return out

    results: dict[str, Path] = {}
    chosen: dict[str, str] = {}
    total = len(plan.modules)
    last = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # The largest modules first: the last worker to finish is not the one that drew the biggest last.
        futures = {pool.submit(one, sha, m): sha for sha, m in _largest_first(bundle, plan)}
        for n, fut in enumerate(as_completed(futures), 1):
            try:
                results[futures[fut]] = fut.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            if log.isEnabledFor(logging.INFO) and (time.monotonic() - last > 2 or n == total):
                last = time.monotonic()
                log.info(f"bake: [{n}/{total}] modules optimized and compiled")
    for sha, o in plan.objects.items():
        results[sha] = planmod.verify_file(bundle, o.path, sha)
    for source, level in sorted(chosen.items()):
        log.info(f"bake: {source}: target-sensitive, using its {level} capture")
    variants.update(chosen)
    return results


# -m flags that name no instruction set feature: a module with others may use more than its target.
_NOT_FEATURES = ("-march=", "-mtune=", "-mcpu=", "-mno-", "-mcmodel=", "-mfpmath=", "-mstackrealign", "-mtls-dialect=",
                 "-mpreferred-stack-boundary=", "-mabi=", "-mfloat-abi=", "-m64", "-m32", "-momit-leaf-frame-pointer",
                 "-mstack-protector-guard", "-mred-zone", "-mieee-fp", "-mlong-double-", "-mregparm=",
                 "-mincoming-stack-boundary=")
_HAS_ASM = re.compile(r"^module asm |\basm\s+(?:sideeffect|alignstack|inteldialect|unwind|\")", re.M)


def _feature_flags(flags) -> list[str]:
    return [f for f in flags if f.startswith("-m") and not f.startswith(_NOT_FEATURES)]


def _bitcode_path_possible(m: Module, target: Target, lto_flag: list[str]) -> bool:
    """Whether the module may be compiled as it is, if its bitcode is plain: the capture took its
    baseline target attributes out, the target's tuning is its CPU's own (opt has no -mtune: a
    tune-cpu other than the CPU needs the text path's rewrite), no LTO."""
    return m.untargeted and not lto_flag and target.tune in (None, target.cpu)


def _plain_bitcode(m: Module, data: bytes, spent: dict[str, float]) -> bytes | None:
    """``data`` (the module's checked bitcode) when it is plain (bakery.bake.bitcode), else None:
    the text path."""
    t = time.perf_counter()
    why = bitcodemod.plain(data)
    spent["scan"] = time.perf_counter() - t
    if why:
        log.debug(f"bake: {m.label}: through llvm-dis ({why})")
        return None
    return data


def _split_key(halves: passes.Halves) -> list[str]:
    """What the object cache keys a split module's compile by, besides its flags: the half run."""
    return [f"finish={halves.finish}", *halves.options]


def _largest_first(bundle: Path, plan: Plan) -> list[tuple[str, Module]]:
    def size(item: tuple[str, Module]) -> int:
        try:
            return (bundle / item[1].path).stat().st_size  # a size to order by: the digest is checked later
        except OSError:
            return 0
    return sorted(plan.modules.items(), key=size, reverse=True)


def _link_all(bundle: Path, plan: Plan, toolchain: Toolchain, target: Target, work: Path, objs: dict[str, Path],
              jobs: int, lto: str, timings: Timings | None = None, profile: Profile | None = None,
              run=proc.run) -> dict[str, Path]:
    ar = toolchain.tool("llvm-ar")
    outs: dict[str, Path] = {}
    preserve_libs = plan.preserve.libs
    opt = _dominant_opt(plan)
    from bakery.bake import isanote

    note = isanote.make(toolchain, target, work)  # x86-64: the ISA level note, in every link
    archives = _make_archives(plan, work, objs, ar, jobs, run)
    for link in plan.links:
        out = work / "out" / link.output
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [toolchain.driver(link.driver), *toolchain.cross_flags, "-fuse-ld=lld", "-o", str(out),
                *(profile.link_flags() if profile else [])]
        if link.driver == "fortran":
            argv += toolchain.fortran_link_flags
        if lto != "none":
            argv += [opt, *target.flags, f"-flto={lto}", f"-Wl,--thinlto-jobs={jobs}" if lto == "thin" else "-flto-jobs=1"]
        has_internal = False
        # .deplibs sections would add inputs the plan does not name (asm_problem refuses them too).
        argv.append("-Wl,--no-dependent-libraries")
        for n, a in enumerate(link.args):
            match a:
                case Flag(text):
                    if text.startswith("/"):
                        planmod.system_input(text)
                    argv.append(text)
                case ModuleRef(sha) | ObjectRef(sha):
                    argv.append(str(objs[sha]))
                case Archive():
                    argv.append(str(archives[link.id, n]))
                case LinkRef(id_):
                    argv.append(str(outs[id_]))
                    has_internal = True
                case FileRef(sha):
                    f = planmod.verify_linker_file(bundle, plan.files[sha].path, sha)
                    argv.append("-Wl," + ",".join(a.tokens(str(f))))
        for lib in preserve_libs:
            if lib not in argv:
                if lib.startswith("/"):
                    planmod.system_input(lib)
                argv.append(lib)
        if has_internal and not any("$ORIGIN" in a for a in argv):
            argv.append("-Wl,-rpath,$ORIGIN")
        if link.kind == "shared" and not link.soname:
            argv.append(f"-Wl,-soname,{link.install}")
        if note is not None:
            argv += note.args
        log.info(f"bake: linking {link.install}")
        t = time.perf_counter()
        proc.run(argv, cwd=work)
        if note is not None:
            note.check(out)
        if timings is not None:
            timings.links[link.install] = time.perf_counter() - t
        outs[link.id] = out
    return outs


def _make_archives(plan: Plan, work: Path, objs: dict[str, Path], ar: str, jobs: int, run) -> dict[tuple[str, int], Path]:
    """Every archive of the links, made from the bake's objects before the first link, ``jobs``
    at a time (GSL's libgsl.so links 55 of them); (link id, argument index) -> the archive."""
    todo: dict[tuple[str, int], tuple[Path, list[str]]] = {}
    for link in plan.links:
        for n, a in enumerate(link.args):
            if isinstance(a, Archive):
                archive = work / "ar" / f"{link.id}-{n}" / a.name
                todo[link.id, n] = (archive, [str(objs[m.sha256]) for m in a.members])

    def make(item: tuple[Path, list[str]]) -> None:
        archive, members = item
        archive.parent.mkdir(parents=True)
        run([ar, "rcsD", str(archive), *members], cwd=work)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(make, todo.values()))
    return {key: archive for key, (archive, _) in todo.items()}


def _dominant_opt(plan: Plan) -> str:
    levels: collections.Counter[str] = collections.Counter()
    for m in plan.modules.values():
        for f in m.flags:
            if f.startswith("-O"):
                levels[f] += 1
    for f in plan.preserve.flags:
        if f.startswith("-O"):
            return f
    return levels.most_common(1)[0][0] if levels else "-O2"
