"""The ISA check: no instruction of a baked output needs a CPU feature its target lacks.

The bake compiles the plan's bitcode for the target, but some code reaches the outputs as it
came: inline asm in the bitcode, native objects the capture kept (``plan.objects``, hand-written
``.S`` files), and ISA flags a build gave on purpose. Any of them can carry the CPU of the
machine it was built on into a node tag that is meant for a lower one, where it dies of SIGILL
in the middle of its run. So after the links every executable and shared library is
disassembled (``llvm-objdump -d --no-show-raw-insn``), each instruction is mapped to the
features it needs by one table (:data:`X86_64`, :data:`AARCH64`; archspec's feature names), and
the bake is refused (:class:`IsaRefused`, exit 3: no node tag is committed or pushed) when code
of the plan needs a feature the target lacks, unless it is runtime dispatch. What the target has
is archspec's features (with :data:`bakery.target.CLANG_EXTRA`) and what clang turns on for the
bake's own flags; code of the plan is code defined by the link's modules or plan objects
(``llvm-nm``), judged by:

* **covered**: the function carries its own ``"target-features"`` in the plan's bitcode
  (``__attribute__((target("bmi2")))``, zstd's ``*_bmi2`` functions), read with ``llvm-dis``
  from the modules that define a function found, once per module digest; or its module was
  compiled with ``-m<feature>`` flags that give the feature (a file built for its SIMD level, as
  dispatch libraries do), unless more than half of the link's modules ask for it: then it is the
  build's baseline, not dispatch;
* **guarded**: every reference to the function from other code is taken through a pointer (a
  ``lea`` of its address, the usual way to select an implementation after ``cpuid``: zstd's
  BMI2 assembly), comes from a covered function, from a function that checks the CPU itself
  (``cpuid``, ``xgetbv``, ``__builtin_cpu_supports``'s ``__cpu_model``, ``getauxval``), or from
  a function that is guarded in turn. ``main`` and the exports of a shared library are never
  guarded.

Refused is only what has evidence of an unguarded path: the function is ``main`` or an export,
or it is called or jumped to directly from code that is neither. Code with no reference from
code at all (reached through a table of pointers, a constructor) is let through, and so is code
of no plan input (the C library's own dispatched variants in a static executable). Instructions
whose requirement is not certain never refuse (logged at debug): ``tzcnt`` runs as ``bsf`` on
CPUs without BMI1 and compilers emit it for baseline code; the system instructions of
:data:`bakery.target.NOT_CODEGEN` (``xgetbv``, AMX, ...) are usable only after the program asks
the CPU or the OS. An output without a symbol table (linked with ``-s``) is not checked, with a
warning. aarch64: SVE (``z0``-``z31``, ``p0``-``p15``, ``rdvl``/``cnt[bhwd]``...) against a target
without ``sve``; SVE2-only instructions are not told apart from SVE.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import archspec.cpu

from bakery import plan as planmod
from bakery import proc
from bakery.errors import BakeryError, CommandFailed, PlanRefused
from bakery.plan.model import Archive, Link, ModuleRef, ObjectRef, Plan
from bakery.target import _CPUINFO_OF_LLVM, CLANG_EXTRA, NOT_CODEGEN, Target, _clang_features, best_level
from bakery.toolchain import Toolchain

log = logging.getLogger(__name__)


REFUSAL_LIMIT = 20   # functions: enough to refuse; the rest of a misbaked output is not judged


class IsaRefused(PlanRefused):
    """A baked output needs a CPU feature its target lacks (exit 3, as a refused plan)."""


# -- the table --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """Instructions that need one of ``needs`` (archspec feature names): those whose mnemonic
    matches ``mnemonic`` (a regular expression, whole mnemonic; None: any) and whose operands
    satisfy ``when`` (:data:`_WHEN`). ``sure=False``: logged, never refused."""

    needs: tuple[str, ...]
    mnemonic: str | None
    when: str = ""
    sure: bool = True


def _r(needs: str, mnemonic: str | None, when: str = "", sure: bool | None = None) -> Rule:
    feats = tuple(needs.split("|"))
    return Rule(feats, mnemonic, when, all(f not in NOT_CODEGEN for f in feats) if sure is None else sure)


# x86-64, AT&T syntax as llvm-objdump prints it. The most specific rules first: the first rule an
# instruction breaks is the one a refusal names. The SSE/SSE2 baseline is never flagged.
X86_64: tuple[Rule, ...] = (
    # AVX-512 and its sub-features (EVEX only, whatever the vector width)
    _r("avx512_vnni", r"vpdp(?:bu|ws)sds?", "evex"),
    _r("avx_vnni", r"vpdp(?:bu|ws)sds?", "vex"),
    _r("avx512_vnni|avx_vnni", r"vpdp(?:bu|ws)sds?", "plain"),
    _r("avx_vnni_int8", r"vpdpb(?:ss|su|uu)ds?"),
    _r("avx_vnni_int16", r"vpdpw(?:su|us|uu)ds?"),
    _r("avx512ifma", r"vpmadd52[hl]uq", "evex"),
    _r("avx_ifma", r"vpmadd52[hl]uq", "vex"),
    _r("avx512ifma|avx_ifma", r"vpmadd52[hl]uq", "plain"),
    _r("avx512_bf16", r"vcvtne2ps2bf16|vdpbf16ps"),
    _r("avx512_bf16", r"vcvtneps2bf16", "evex"),
    _r("avx_ne_convert", r"vcvtneps2bf16", "vex"),
    _r("avx512_bf16|avx_ne_convert", r"vcvtneps2bf16", "plain"),
    _r("avx_ne_convert", r"vbcstne(?:bf16|sh)2ps|vcvtne[eo](?:bf16|ph)2ps"),
    _r("avx512_vpopcntdq", r"vpopcnt[dq]"),
    _r("avx512_bitalg", r"vpopcnt[bw]|vpshufbitqmb"),
    _r("avx512vbmi", r"vpermb|vperm[it]2b|vpmultishiftqb"),
    _r("avx512_vbmi2", r"vpcompress[bw]|vpexpand[bw]|vpsh[lr]dv?[wdq]"),
    _r("avx512_vp2intersect", r"vp2intersect[dq]"),
    _r("avx512cd", r"vpconflict[dq]|vplzcnt[dq]|vpbroadcastm(?:b2q|w2d)"),
    _r("avx512_fp16", r"vmovw|vcvtph2psx|vcvtps2phx|v(?!cvtps2ph$)[a-z0-9]*[ps]h"),
    _r("avx512dq", r"vpmullq|vcvtt?p[sd]2u?qq|vcvtu?qq2p[sd]|vrange[ps][sd]|vreduce[ps][sd]|vfpclass[ps][sd]"
                   r"|vpmovm2[dq]|vpmov[dq]2m|v(?:insert|extract)[fi](?:32x8|64x2)|vbroadcast[fi](?:32x2|32x8|64x2)"),
    _r("avx512bw", r"vmovdqu(?:8|16)|vpmovm2[bw]|vpmov[bw]2m|vpermw|vperm[it]2w|vps(?:llv|rlv|rav)w"
                   r"|vpmov(?:s|us)?wb|vdbpsadbw|vpcmpu?[bw]|vpblendm[bw]|vptestn?m[bw]"),
    _r("avx512f", r"vpternlog[dq]|valign[dq]|vperm[it]2(?:d|q|ps|pd)|vpro[lr]v?[dq]"
                  r"|vpmov(?:s|us)?(?:q[bwd]|d[bw])|vp?compress(?:d|q|ps|pd)|vp?expand(?:d|q|ps|pd)"
                  r"|v(?:fixupimm|getexp|getmant|rcp14|rsqrt14|rndscale|scalef)[ps][sd]|vpabsq|vp(?:max|min)[su]q"
                  r"|vpsraq|vpsravq|vcvtt?(?:ps2udq|pd2udq|ss2usi|sd2usi)|vcvtusi2s[sd]|vcvtudq2p[sd]"
                  r"|vshuf[fi](?:32x4|64x2)|v(?:insert|extract)[fi](?:32x4|64x4)|vbroadcast[fi](?:32x4|64x4)"
                  r"|vmovdq[au](?:32|64)|vpandn?[dq]|vpx?or[dq]|vptestn?m[dq]|vpcmpu?[dq]|vblendmp[sd]"
                  r"|vpblendm[dq]|vp?scatter[dq](?:d|q|ps|pd)"),
    _r("avx512pf", r"v(?:gather|scatter)pf[01][dq]p[sd]"),
    _r("avx512f", None, "evex"),   # zmm, k masks, xmm16-31/ymm16-31, {1toN} broadcasts, {sae}
    # cryptography and bit manipulation in vector registers
    _r("vaes", r"vaes(?:enc|dec)(?:last)?", "wide"),
    _r("aes", r"v?aes(?:enc|dec)(?:last)?|v?aesimc|v?aeskeygenassist", "narrow"),
    _r("vpclmulqdq", r"vpclmul\w*qdq", "wide"),
    _r("pclmulqdq", r"v?pclmul\w*qdq", "narrow"),
    _r("gfni", r"v?gf2p8(?:affine(?:inv)?qb|mulb)"),
    _r("sha_ni", r"sha1(?:rnds4|nexte|msg[12])|sha256(?:rnds2|msg[12])"),
    _r("sha512", r"vsha512(?:rnds2|msg[12])"),
    _r("sm3", r"vsm3(?:msg[12]|rnds2)"),
    _r("sm4", r"vsm4(?:key4|rnds4)"),
    # AMD's extensions
    _r("fma4", r"vfn?m(?:add|sub)(?:sub|add)?[ps][sd]"),
    _r("xop", r"vpcmov|vpperm|vprot[bwdq]|vpsha[bwdq]|vpshl[bwdq]|vfrcz[ps][sd]|vpmacss?(?:ww|wd|dd|dql|dqh)"
              r"|vpmadcss?wd|vpcom(?:lt|le|gt|ge|eq|neq|false|true)?u?[bwdq]|vphaddu?(?:bw|bd|bq|wd|wq|dq)"
              r"|vphsub(?:bw|wd|dq)|vpermil2p[sd]"),
    _r("sse4a", r"extrq|insertq|movnts[sd]"),
    _r("tbm", r"blc(?:fill|ic|i|msk|s)[lq]?|bls(?:fill|ic)[lq]?|t1mskc[lq]?|tzmsk[lq]?"),
    _r("tbm", r"bextr[lq]?", "imm"),
    # AVX2, FMA, F16C, AVX
    _r("fma", r"vfn?m(?:add|sub)(?:sub|add)?(?:132|213|231)[ps][sd]"),
    _r("f16c", r"vcvtph2ps|vcvtps2ph"),
    _r("avx2", r"vpbroadcast[bwdq]|vbroadcasti128|vinserti128|vextracti128|vperm2i128|vperm(?:d|q|ps|pd)"
               r"|vpmaskmov[dq]|vps(?:llv|rlv)[dq]|vpsravd|vpblendd|vp?gather[dq](?:d|q|ps|pd)"),
    _r("avx2", r"vbroadcasts[sd]", "src-xmm"),
    _r("avx2", r"vmovntdqa", "ymm"),
    _r("avx2", r"vp(?!ermilp[sd]$|test$|clmul|cmov$|ermil2)[a-z0-9]+", "ymm"),  # 256-bit integer ops
    _r("avx", r"vzero(?:upper|all)|v(?:ld|st)mxcsr"),
    _r("avx", r"v[a-z][a-z0-9]*", "vec"),   # VEX-encoded (AVX) floating point, and 128-bit integer
    # scalar extensions
    _r("bmi2", r"(?:bzhi|pdep|pext|mulx|rorx|sarx|shlx|shrx)[lq]?"),
    _r("bmi1", r"(?:andn|blsi|blsmsk|blsr)[lq]?"),
    _r("bmi1", r"bextr[lq]?", "reg"),
    _r("bmi1", r"tzcnt[wlq]?", sure=False),  # runs as bsf without BMI1; baseline code has it (rep bsf)
    _r("abm", r"lzcnt[wlq]?"),
    _r("popcnt", r"popcnt[wlq]?"),
    _r("movbe", r"movbe[wlq]?"),
    _r("adx", r"ad[co]x[lq]?"),
    _r("rdrand", r"rdrand[wlq]?"),
    _r("rdseed", r"rdseed[wlq]?"),
    _r("cmpccxadd", r"cmpn?(?:b|be|l|le|o|p|s|z)xadd[lq]?"),
    _r("cx16", r"cmpxchg16b"),
    _r("lahf_lm", r"lahf|sahf"),
    # SSE3 to SSE4.2 (legacy encodings; the VEX ones need AVX, above)
    _r("sse4_2", r"pcmp[ei]str[im]|pcmpgtq|crc32[bwlq]?"),
    _r("sse4_1", r"pmulld|ptest|pblendvb|pblendw|blendv?p[sd]|dpp[sd]|extractps|insertps|mpsadbw|pextr[bdq]"
                 r"|pinsr[bdq]|pm(?:ax|in)(?:sb|sd|ud|uw)|pmov[sz]x(?:bw|bd|bq|wd|wq|dq)|pmuldq|packusdw|pcmpeqq"
                 r"|phminposuw|round[ps][sd]|movntdqa"),
    _r("ssse3", r"pshufb|palignr|ph(?:add|sub)(?:w|d|sw)|pabs[bwd]|pmaddubsw|pmulhrsw|psign[bwd]"),
    _r("sse3", r"addsubp[sd]|h(?:add|sub)p[sd]|lddqu|movddup|movs[hl]dup|fisttp(?:s|l|ll)?"),
    # instructions a program uses only after asking the CPU or the OS (target.NOT_CODEGEN): logged
    _r("amx_tile", r"tile\w+|[ls]dtilecfg|tdp\w+"),
    _r("amx_tile", None, "tmm"),
    _r("xsave", r"xsave\w*|xrstor\w*|xgetbv|xsetbv"),
    _r("fsgsbase", r"(?:rd|wr)[fg]sbase[lq]?"),
    _r("pku", r"rdpkru|wrpkru"),
    _r("waitpkg", r"umonitor|umwait|tpause"),
    _r("rdpid", r"rdpid"),
    _r("clflushopt", r"clflushopt"),
    _r("clwb", r"clwb"),
    _r("3dnowprefetch", r"prefetchw", sure=False),  # a no-op on CPUs without it
)

AARCH64: tuple[Rule, ...] = (
    _r("sve", r"rdvl|addvl|addpl|cnt[bhwd]|(?:[su]q)?(?:inc|dec)[bhwd]|setffr|rdffrs?|wrffr"),
    _r("sve", None, "sve-reg"),
)

RULES: dict[str, tuple[Rule, ...]] = {"x86_64": X86_64, "aarch64": AARCH64}

_EVEX = r"%zmm|%k[0-7]\b|%[xy]mm(?:1[6-9]|2\d|3[01])\b|\{1to\d+\}|\{sae\}|-sae\}|\{evex\}"
# Operand conditions; the pattern of those a line must contain is also its screening token.
_WHEN: dict[str, re.Pattern[str]] = {
    "evex": re.compile(_EVEX),
    "tmm": re.compile(r"%tmm\d"),
    "vec": re.compile(r"%[xyz]mm\d"),
    "ymm": re.compile(r"%ymm\d"),
    "wide": re.compile(r"%[yz]mm\d"),
    "src-xmm": re.compile(r"^%xmm\d"),
    "imm": re.compile(r"^\$"),
    "sve-reg": re.compile(r"\bz(?:[12]?\d|3[01])(?:\.[bhsdq])?\b|\bp(?:1[0-5]|\d)(?:\.[bhsdq])?(?![\w.])"),
}
_SCREENED = ("evex", "tmm", "sve-reg")  # conditions that find instructions by their operands alone

PREFIXES = frozenset({"{vex}", "{vex2}", "{vex3}", "{evex}", "{disp8}", "{disp32}", "rep", "repe", "repz", "repne",
                      "repnz", "lock", "notrack", "bnd", "data16", "data32", "addr32", "rex64", "xacquire",
                      "xrelease", "cs", "ds", "es", "ss", "fs", "gs"})

BASELINE = {"x86_64": frozenset({"x87", "fpu", "mmx", "fxsr", "cx8", "cmov", "sse", "sse2", "lm", "syscall"}),
            "aarch64": frozenset({"fp", "asimd"})}


@dataclass(frozen=True)
class Insn:
    prefixes: tuple[str, ...]
    mnemonic: str
    operands: str   # without the disassembler's comment and <symbol> annotations

    def holds(self, when: str) -> bool:
        if not when:
            return True
        if when == "vex":
            return "{vex}" in self.prefixes or "{vex2}" in self.prefixes or "{vex3}" in self.prefixes
        if when == "plain":
            return not self.holds("vex") and not self.holds("evex")
        if when == "narrow":
            return not self.holds("wide")
        if when == "reg":
            return not self.holds("imm")
        if when == "evex" and "{evex}" in self.prefixes:
            return True
        return bool(_WHEN[when].search(self.operands))


_COMMENT = {"x86_64": re.compile(r"\s+#.*$"), "aarch64": re.compile(r"\s+//.*$")}
_ANNOTATION = re.compile(r"<[^>]*>")


def parse(line: str, family: str = "x86_64") -> Insn | None:
    """One instruction line of ``llvm-objdump -d --no-show-raw-insn`` (``  1130: \\tvpaddd\\t%ymm1, ...``),
    or just the instruction (``vpaddd %ymm1, %ymm2, %ymm0``). None: not an instruction."""
    a = _ADDRESS.match(line)
    rest = (line[a.end():] if a else line).strip()
    prefixes: list[str] = []
    while (tok := re.match(r"(\S+)\s*", rest)) and tok.group(1) in PREFIXES:
        prefixes.append(tok.group(1))
        rest = rest[tok.end():]
    word = re.match(r"([a-z][a-z0-9.]*)(?:\s+|$)", rest)
    if word is None:
        return None
    operands = _COMMENT.get(family, _COMMENT["x86_64"]).sub("", rest[word.end():])
    return Insn(tuple(prefixes), word.group(1), _ANNOTATION.sub("", operands).strip())


@functools.cache
def _compiled(family: str) -> tuple[tuple[Rule, re.Pattern[str] | None], ...]:
    return tuple((r, re.compile(r.mnemonic) if r.mnemonic else None) for r in RULES[family])


@functools.cache
def _candidates(family: str, mnemonic: str) -> tuple[Rule, ...]:
    """The rules whose mnemonic pattern takes ``mnemonic`` (their operand conditions not yet seen)."""
    return tuple(r for r, p in _compiled(family) if p is None or p.fullmatch(mnemonic))


def rules_of(insn: Insn, family: str = "x86_64") -> list[Rule]:
    return [r for r in _candidates(family, insn.mnemonic) if insn.holds(r.when)] if family in RULES else []


def classify(line: str, family: str = "x86_64") -> list[Rule]:
    """The rules an instruction falls under, most specific first (an empty list: it needs no
    feature beyond the family's baseline, or none the table knows)."""
    insn = parse(line, family)
    return [] if insn is None else rules_of(insn, family)


def needs(line: str, family: str = "x86_64") -> list[tuple[str, ...]]:
    """What an instruction needs, as alternatives (``("avx512_vnni", "avx_vnni")``: either)."""
    return [r.needs for r in classify(line, family)]


def _lacking(rules: list[Rule], have: frozenset[str] | set[str], sure_only: bool) -> Rule | None:
    for rule in rules:
        if (rule.sure or not sure_only) and not any(n in have for n in rule.needs):
            return rule
    return None


def missing(line: str, have: frozenset[str] | set[str], family: str = "x86_64", *,
            sure_only: bool = True) -> Rule | None:
    """The first rule of the instruction that ``have`` does not satisfy."""
    return _lacking(classify(line, family), have, sure_only)


class _Screen:
    """Finds, fast, every line that may break a rule the target does not satisfy (a superset:
    each line found is classified): the mnemonics of a chunk are collected first (C speed), and
    only a chunk with one a rule may match, or an operand token of one, is searched line by line."""

    def __init__(self, family: str, have: frozenset[str], unsure: bool):
        rules = [(r, p) for r, p in _compiled(family)
                 if not any(n in have for n in r.needs) and (r.sure or unsure)]
        self.patterns = [p for r, p in rules if p is not None]
        tokens = [_WHEN[r.when].pattern for r, p in rules if p is None and r.when in _SCREENED]
        self.tokens = re.compile("|".join(tokens)) if tokens else None
        self.known: dict[str, bool] = {}
        self.empty = not self.patterns and self.tokens is None

    def _interesting(self, word: str) -> bool:
        if (v := self.known.get(word)) is None:
            v = self.known[word] = any(p.fullmatch(word) for p in self.patterns)
        return v

    def lines(self, chunk: str) -> Iterator[str]:
        if self.empty:
            return
        words = sorted((w for w in set(_WORD.findall(chunk)) if self._interesting(w)), key=len, reverse=True)
        alts = [rf"\t(?:{'|'.join(map(re.escape, words))})(?=[\t\n])"] if words else []
        if self.tokens is not None and self.tokens.search(chunk):
            alts.append(self.tokens.pattern)
        if not alts:
            return
        last = -1
        for m in re.finditer("|".join(alts), chunk):
            start = chunk.rfind("\n", 0, m.start()) + 1
            if start == last:
                continue
            last = start
            end = chunk.find("\n", m.end())
            yield chunk[start:end if end >= 0 else len(chunk)]


_WORD = re.compile(r"\t([a-z][a-z0-9]*)(?=[\t\n])")


# -- what the target has --------------------------------------------------------------------------

def _archspec_names(llvm: str) -> tuple[str, ...]:
    return {"neon": ("asimd",)}.get(llvm) or _CPUINFO_OF_LLVM.get(llvm, (llvm,))


def llvm_to_archspec(features) -> set[str]:
    """archspec's names for LLVM feature names (``+avx2``, ``sse4.2``, ``bmi``)."""
    out: set[str] = set()
    for f in features:
        f = f.strip()
        if f.startswith("-") or not f:
            continue
        out.update(_archspec_names(f.lstrip("+")))
    return out


def archspec_features(name: str) -> frozenset[str]:
    """archspec's features of a target, its ancestors' :data:`~bakery.target.CLANG_EXTRA`, and
    the family's baseline (archspec lists none for plain ``x86_64``)."""
    t = archspec.cpu.TARGETS[name]
    extra = {f for a in [t, *t.ancestors] for f in CLANG_EXTRA.get(a.name, ())}
    return frozenset(set(t.features) | extra | BASELINE.get(t.family.name, frozenset()))


def target_features(toolchain: Toolchain, target: Target) -> frozenset[str]:
    """archspec's features of the target (its ancestors' clang extras too), and what clang turns
    on for the bake's flags: what the bake itself told the compiler it may use."""
    have = set(archspec_features(target.name))
    feats = _clang_features(toolchain.clang, (*toolchain.cross_flags, *target.flags))
    if feats:
        have |= llvm_to_archspec(feats)
    return frozenset(have)


# -- reading the outputs ----------------------------------------------------------------------------

_HEADER = re.compile(r"^([0-9a-f]{8,}) <(.*)>:$", re.M)
_ADDRESS = re.compile(r"^ *([0-9a-f]+):")
_TARGET = re.compile(r"0x([0-9a-f]+) <([^>\n]+)>")
_LINE = re.compile(r" *([0-9a-f]+):[ \t]+(?:(?:\{\w+\}|rep|repe|repne|notrack|bnd|lock|data16)\t+)*([a-z][\w.]*)")
_CPU_INSN = re.compile(r"^ *([0-9a-f]+):[ \t]+(?:cpuid|xgetbv)\b|^ *([0-9a-f]+):[ \t]+mrs\t[^\n]*\bid_aa64", re.M)
# What checks the CPU at run time, by the symbols it reads or calls.
CPU_CHECKS = frozenset({"__cpu_model", "__cpu_features2", "__cpu_indicator_init", "__get_cpuid",
                        "__get_cpuid_count", "getauxval", "__getauxval", "__aarch64_cpu_features",
                        "__init_cpu_features", "__init_cpu_features_resolver"})
_DIRECT = re.compile(r"j[a-z]*|call[a-z]*|loop[a-z]*|b|bl|b\.[a-z]+|cbn?z|tbn?z")


@contextlib.contextmanager
def disassembly(objdump: str, path: Path) -> Iterator[Path]:
    """``llvm-objdump -d --no-show-raw-insn`` of ``path`` in a temporary file, removed afterwards
    (to a file, not a pipe: LLVM writes a pipe 4 KB at a time, and a second pass rereads it)."""
    argv = [objdump, "-d", "--no-show-raw-insn", str(path)]
    with tempfile.NamedTemporaryFile(prefix="bakery-isa-", suffix=".s") as out, tempfile.TemporaryFile() as err:
        try:
            rc = subprocess.run(argv, stdout=out, stderr=err).returncode
        except FileNotFoundError:
            raise BakeryError(f"{objdump} not found") from None
        if rc != 0:
            err.seek(0)
            raise CommandFailed(argv, rc, err.read().decode(errors="replace"))
        yield Path(out.name)


def _chunks(path: Path) -> Iterator[str]:
    """A disassembly in chunks of whole lines (it can be hundreds of MB)."""
    with path.open(errors="replace") as f:
        rest = ""
        while block := f.read(1 << 22):
            block = rest + block
            cut = block.rfind("\n") + 1
            rest = block[cut:]
            yield block[:cut]
        if rest:
            yield rest + "\n"


@dataclass
class Finding:
    function: int          # index in Scan.names
    insn: str              # the instruction as disassembled
    rule: Rule


@dataclass
class Scan:
    """One output's functions (start addresses, names) and the instructions that need more than
    the target has: the first of each function and rule, and how many there were."""

    starts: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    findings: dict[tuple[int, Rule], Finding] = field(default_factory=dict)
    count: int = 0
    unsure: dict[str, int] = field(default_factory=dict)   # mnemonic -> count, not refused

    def function_at(self, addr: int) -> int | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        return i if i >= 0 else None


def scan(listing: Path, family: str, have: frozenset[str], *, unsure: bool = False) -> Scan:
    """The functions of a disassembly (:func:`disassembly`) and what of it the target lacks
    (``unsure``: the rules that never refuse too, for the debug log)."""
    out = Scan()
    screen = _Screen(family, have, unsure)
    hits: list[tuple[int, str]] = []
    for chunk in _chunks(listing):
        for m in _HEADER.finditer(chunk):
            out.starts.append(int(m.group(1), 16))
            out.names.append(m.group(2))
        for line in screen.lines(chunk):
            if (a := _ADDRESS.match(line)) is not None:
                hits.append((int(a.group(1), 16), line))
    order = sorted(range(len(out.starts)), key=out.starts.__getitem__)
    out.starts = [out.starts[i] for i in order]
    out.names = [out.names[i] for i in order]
    for addr, line in hits:
        insn = parse(line, family)
        rule = None if insn is None else _lacking(rules_of(insn, family), have, False)
        if insn is None or rule is None:
            continue
        if not rule.sure:
            out.unsure[insn.mnemonic] = out.unsure.get(insn.mnemonic, 0) + 1
            continue
        fn = out.function_at(addr)
        if fn is None:
            continue
        out.count += 1
        if (fn, rule) not in out.findings:
            out.findings[fn, rule] = Finding(fn, f"{insn.mnemonic} {insn.operands}".strip(), rule)
    return out


@dataclass
class Graph:
    """References between an output's functions: (referrer, direct?) by function, and the
    functions that check the CPU themselves."""

    incoming: dict[int, list[tuple[int, bool]]] = field(default_factory=dict)
    checks_cpu: set[int] = field(default_factory=set)


def graph(listing: Path, sc: Scan) -> Graph:
    g = Graph()
    by_name: dict[str, list[int]] = {}
    for i, n in enumerate(sc.names):
        by_name.setdefault(_plain(n), []).append(i)
    current = ""   # the function the lines being read are in (a jump inside it is no reference)
    for chunk in _chunks(listing):
        heads = [(m.start(), m.group(2)) for m in _HEADER.finditer(chunk)]
        h = 0
        last = -1
        for m in _TARGET.finditer(chunk):
            while h < len(heads) and heads[h][0] < m.start():
                current = heads[h][1]
                h += 1
            name = m.group(2).split("+", 1)[0]
            if name == current:
                continue
            start = chunk.rfind("\n", 0, m.start()) + 1
            if start == last:
                continue
            last = start
            line = _LINE.match(chunk, start)
            if line is None or (src := sc.function_at(int(line.group(1), 16))) is None:
                continue
            plain = _plain(name)
            if plain in CPU_CHECKS:
                g.checks_cpu.add(src)
                continue
            if name.endswith("@plt"):  # a call through the PLT: to the function of that name
                targets = by_name.get(plain, [])
            else:
                dst = sc.function_at(int(m.group(1), 16))
                # the symbol objdump names must be that function's: not data after the code
                targets = [dst] if dst is not None and sc.names[dst] == name else []
            direct = _DIRECT.fullmatch(line.group(2)) is not None
            for dst in targets:
                if dst != src:
                    g.incoming.setdefault(dst, []).append((src, direct))
        current = heads[-1][1] if heads else current
        if "\tcpuid" in chunk or "\txgetbv" in chunk or "id_aa64" in chunk:
            for m in _CPU_INSN.finditer(chunk):
                src = sc.function_at(int(m.group(1) or m.group(2), 16))
                if src is not None:
                    g.checks_cpu.add(src)
    return g


def _plain(name: str) -> str:
    """A symbol as objdump names it, without ``@plt``/``@@VERSION``."""
    return name.split("@", 1)[0]


# -- where a function comes from, and what it may use -----------------------------------------------

@dataclass(frozen=True)
class Origin:
    kind: str     # "module" or "object"
    sha: str

    def describe(self, plan: Plan) -> str:
        if self.kind == "module":
            return f"module {plan.modules[self.sha].label}"
        o = plan.objects[self.sha]
        return f"object {o.name}: {o.path}" if o.name else f"object {o.path}"


_DEFINE = re.compile(r'^define\b[^@\n]*@(?:"((?:[^"\\\n]|\\.)*)"|([-\w$.]+))\(([^\n]*)$', re.M)
_GROUP = re.compile(r"^attributes #(\d+) = \{([^\n]*)\}$", re.M)
_FEATURES = re.compile(r'"target-features"="([^"]*)"')


def own_features(ir: str) -> dict[str, set[str]]:
    """Functions of an IR module that carry their own ``"target-features"`` (archspec names)."""
    groups = {}
    for m in _GROUP.finditer(ir):
        f = _FEATURES.search(m.group(2))
        if f:
            groups[m.group(1)] = llvm_to_archspec(f.group(1).split(","))
    out: dict[str, set[str]] = {}
    if not groups:
        return out
    for m in _DEFINE.finditer(ir):
        feats: set[str] = set()
        for g in re.findall(r"\s#(\d+)\b", m.group(3)):
            feats |= groups.get(g, set())
        if feats:
            out[m.group(1) if m.group(1) is not None else m.group(2)] = feats
    return out


_NM = re.compile(r"^(.*): (\S+) [A-Za-z?-] ", re.M)  # llvm-nm -P -A: "FILE: NAME TYPE VALUE SIZE"


class Origins:
    """The plan inputs of the links, their symbols (``llvm-nm``), and what the modules' functions
    may use (``llvm-dis``, once per module digest). Everything is read on first need only: a
    clean bake runs neither."""

    def __init__(self, bundle: Path, plan: Plan, toolchain: Toolchain, target: Target, objects: Mapping[str, Path]):
        self.bundle, self.plan, self.tc, self.target, self.objects = bundle, plan, toolchain, target, objects
        self._symbols: dict[str, set[str]] = {}
        self._links: dict[str, dict[str, list[Origin]]] = {}
        self._own: dict[str, dict[str, set[str]]] = {}
        self._flags: dict[str, set[str] | None] = {}

    def inputs(self, link: Link) -> list[Origin]:
        out: list[Origin] = []
        for a in link.args:
            match a:
                case ModuleRef(sha):
                    out.append(Origin("module", sha))
                case ObjectRef(sha):
                    out.append(Origin("object", sha))
                case Archive(_, members):
                    out += [Origin("module" if m.sha256 in self.plan.modules else "object", m.sha256) for m in members]
        return out

    def symbols(self, link: Link) -> dict[str, list[Origin]]:
        """Symbol name -> the plan inputs of ``link`` that define it (one ``llvm-nm`` for all)."""
        if link.id not in self._links:
            inputs = list(dict.fromkeys(self.inputs(link)))
            todo = {str(self.objects[o.sha]): o.sha for o in inputs if o.sha not in self._symbols}
            for digest in todo.values():
                self._symbols[digest] = set()
            if todo:
                text = proc.run([self.tc.tool("llvm-nm"), "--defined-only", "-P", "-A", "--no-sort", *todo],
                                check=False).stdout
                for m in _NM.finditer(text):
                    if (found := todo.get(m.group(1))) is not None:
                        self._symbols[found].add(m.group(2))
            table: dict[str, list[Origin]] = {}
            for o in inputs:
                for name in self._symbols[o.sha]:
                    table.setdefault(name, []).append(o)
            self._links[link.id] = table
        return self._links[link.id]

    def own(self, sha: str) -> dict[str, set[str]]:
        """The module's functions with their own target features (archspec names)."""
        if sha not in self._own:
            m = self.plan.modules[sha]
            path, digest = m.path, sha
            level = best_level(self.target.name, [v.level for v in m.variants]) if m.variants else None
            if level:
                v = m.variant(level)
                path, digest = v.path, v.sha256
            bc = planmod.verify_file(self.bundle, path, digest)
            self._own[sha] = _own_of(self.tc.tool("llvm-dis"), str(bc), digest)
        return self._own[sha]

    def flag_features(self, sha: str) -> set[str] | None:
        """What the module's own ``-m`` feature flags give (None: clang could not say)."""
        if sha not in self._flags:
            from bakery.capture.flags import HOST_CPU_PREFIXES

            mflags = tuple(f for f in self.plan.modules[sha].flags
                           if f.startswith("-m") and not f.startswith(HOST_CPU_PREFIXES))
            if not mflags:
                self._flags[sha] = set()
            else:
                feats = _clang_features(self.tc.clang, (*self.tc.cross_flags, *mflags))
                self._flags[sha] = None if feats is None else llvm_to_archspec(feats)
        return self._flags[sha]


@functools.lru_cache(maxsize=256)
def _own_of(dis: str, bc: str, digest: str) -> dict[str, set[str]]:
    return own_features(proc.run([dis, bc, "-o", "-"]).stdout)


# -- the check --------------------------------------------------------------------------------------

@dataclass
class Verdict:
    output: str
    function: str
    finding: Finding
    origins: list[Origin]
    why: str                # refused: what makes the path unguarded; allowed: the dispatch seen
    dispatched: bool = False  # allowed: covered, or every path guarded (not merely unreferenced)


@dataclass
class Report:
    seconds: float = 0.0
    outputs: int = 0
    allowed: list[Verdict] = field(default_factory=list)
    refused: list[Verdict] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)   # outputs without a symbol table
    unjudged: set[tuple[str, str]] = field(default_factory=set)  # (output, function) after REFUSAL_LIMIT
    plain: int = 0   # outputs made of plain modules only: nothing to look for, not disassembled
    by_inputs: int = 0  # outputs whose other inputs were disassembled alone and hold nothing to judge


def check(bundle: Path, plan: Plan, toolchain: Toolchain, target: Target, outputs: Mapping[str, Path],
          objects: Mapping[str, Path], plain: set[str] | None = None) -> Report:
    """Check every link output (``outputs``: link id -> file) of a bake for ``target``;
    ``objects``: plan input digest -> the file the links used. Raises :class:`IsaRefused`.
    ``plain``: the modules this bake compiled from bitcode with nothing beyond the target (no
    module or inline asm, no -m feature flags): an output made of those alone (and of other
    outputs, checked on their own) cannot hold what the check looks for, and is not
    disassembled (LAMMPS: one 10 MB program, several seconds)."""
    t0 = time.monotonic()
    report = Report()
    if target.family not in RULES:
        log.info(f"bake: ISA check: no instruction table for {target.family}; not checked")
        return report
    have = target_features(toolchain, target)
    objdump = toolchain.tool("llvm-objdump")
    origins = Origins(bundle, plan, toolchain, target, objects)
    clean: dict[str, bool] = {}   # input digest -> its object alone has nothing the target lacks
    for link in plan.links:
        path = outputs[link.id]
        report.outputs += 1
        if plain is not None and _only_plain(link, plain):
            report.plain += 1
            continue
        if plain is not None and _inputs_clean(link, plain, objects, objdump, target.family, have, clean):
            report.by_inputs += 1
            continue
        with disassembly(objdump, path) as listing:
            sc = scan(listing, target.family, have, unsure=log.isEnabledFor(logging.DEBUG))
            for mnem, n in sorted(sc.unsure.items()):
                log.debug(f"bake: ISA check: {link.install}: {n} x {mnem}, whose requirement is not certain: "
                          "not refused")
            if sc.findings:
                _judge(link, path, listing, sc, plan, target, origins, report)
    report.seconds = time.monotonic() - t0
    for dispatched, what in ((True, "behind runtime dispatch"),
                             (False, "in code no other code references (a table of pointers?)")):
        names = sorted({v.function for v in report.allowed if v.dispatched is dispatched})
        if names:
            log.info(f"bake: ISA check: {len(names)} functions use features beyond {target.name} {what}: "
                     f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
    if report.refused:
        raise _refusal(report, plan, target)
    plain_note = f" ({report.plain} made of modules with no asm and no -m flags alone)" if report.plain else ""
    if report.by_inputs:
        plain_note += (f" ({report.by_inputs} by their modules with asm or -m flags and native objects alone,"
                       " which hold nothing to judge)")
    log.info(f"bake: ISA check: {report.outputs - len(report.unchecked)} of {report.outputs} outputs checked"
             f"{plain_note} in {report.seconds:.2f}s: no instruction outside runtime dispatch needs a feature "
             f"{target.name} lacks")
    return report


def _inputs_clean(link: Link, plain: set[str], objects: Mapping[str, Path], objdump: str, family: str,
                  have: frozenset[str], clean: dict[str, bool]) -> bool:
    """Whether the link's plan inputs that are not plain modules (modules with asm or -m flags,
    native objects) are ELF objects whose own disassembly has no instruction the target lacks.
    The rest of the output is plain modules, other outputs and system code: then nothing in it
    is for :func:`_judge` (what :func:`_only_plain` says of an output of plain modules alone),
    and the output, GSL's libgsl.so of 774 modules with one that has asm, is not disassembled."""
    from bakery.plan.model import FileRef, ModuleRef, ObjectRef

    todo: list[str] = []
    for item in _items(link):
        if isinstance(item, FileRef):
            return False
        if isinstance(item, (ModuleRef, ObjectRef)) and item.sha256 not in plain:
            todo.append(item.sha256)
    for sha in todo:
        if sha not in clean:
            path = objects.get(sha)
            ok = False
            if path is not None:
                with open(path, "rb") as f:
                    elf = f.read(18)
                # a relocatable ELF object (e_type 1), not LTO bitcode: its instructions are the output's
                if elf[:4] == b"\x7fELF" and elf[16:18] in (b"\x01\x00", b"\x00\x01"):
                    with disassembly(objdump, path) as listing:
                        ok = not scan(listing, family, have).findings
            clean[sha] = ok
        if not clean[sha]:
            return False
    return True


def _only_plain(link: Link, plain: set[str]) -> bool:
    """Whether every plan input of the link is a plain module (or another output)."""
    from bakery.plan.model import Flag, LinkRef, ModuleRef

    for item in _items(link):
        # flags and system libraries are no plan code; another output is checked on its own
        plain_item = (isinstance(item, ModuleRef) and item.sha256 in plain) or isinstance(item, (Flag, LinkRef))
        if not plain_item:
            return False   # a native object or file of the plan, or a module that is not plain
    return True


def _items(link: Link) -> Iterator:
    """The link's arguments, with each archive's members in its place."""
    for a in link.args:
        yield from a.members if isinstance(a, Archive) else (a,)


def _judge(link: Link, path: Path, listing: Path, sc: Scan, plan: Plan, target: Target, origins: Origins,
           report: Report) -> None:
    named = any(not n.startswith(".") and "@" not in n for n in sc.names)
    if not named:
        log.warning(f"bake: ISA check: {link.install} has no symbol table (linked with -s?): its "
                    f"{sc.count} instructions beyond {target.name} are not checked")
        report.unchecked.append(link.install)
        return
    table = origins.symbols(link)

    def origin_of(fn: int) -> list[Origin]:
        name = _plain(sc.names[fn])
        return table.get(name) or table.get(name.split(".", 1)[0], [])

    baseline: dict[Rule, bool] = {}

    def covered(fn: int, rule: Rule) -> str | None:
        """Why the function may use what ``rule`` needs: its own target attribute, its module's flags."""
        name = _plain(sc.names[fn])
        for o in origin_of(fn):
            if o.kind != "module":
                continue
            own = origins.own(o.sha)
            feats = own.get(name) or own.get(name.split(".", 1)[0])
            if feats and any(n in feats for n in rule.needs):
                return "its own target attribute"
            flags = origins.flag_features(o.sha)
            if flags is None:
                return "its module's -m flags (clang could not say what they give)"
            if any(n in flags for n in rule.needs):
                if rule not in baseline:
                    baseline[rule] = _baseline_of_link(origins, link, rule)
                if not baseline[rule]:
                    return "its module's -m flags"
        return None

    g: Graph | None = None
    entries: set[int] = set()
    for (fn, rule), f in sorted(sc.findings.items(), key=lambda kv: sc.starts[kv[0][0]]):
        name = sc.names[fn]
        if len({(v.output, v.function) for v in report.refused}) >= REFUSAL_LIMIT:
            report.unjudged.add((link.install, _plain(name)))  # enough to refuse: spare the llvm-dis
            continue
        orig = origin_of(fn) if not name.startswith(".") else []
        if not orig:
            log.debug(f"bake: ISA check: {link.install}: {f.insn} in {name}, which no plan input defines "
                      f"(system code): not refused")
            continue
        why = covered(fn, rule)
        if why:
            report.allowed.append(Verdict(link.install, _plain(name), f, orig, why, True))
            continue
        if g is None:
            g, entries = graph(listing, sc), _entries(link, path, sc, origins.tc)
        status, why = _reach(fn, rule, sc, g, entries, covered, origin_of)
        verdict = Verdict(link.install, _plain(name), f, orig, why, status is True)
        if status is False:
            report.refused.append(verdict)
        else:
            report.allowed.append(verdict)
            log.debug(f"bake: ISA check: {link.install}: {f.insn} in {verdict.function}: {why}")


def _baseline_of_link(origins: Origins, link: Link, rule: Rule) -> bool:
    """More than half of the link's modules ask for the feature by their flags: the build's
    baseline (``CFLAGS=-mavx2``), not a file compiled for dispatch."""
    mods = [o.sha for o in dict.fromkeys(origins.inputs(link)) if o.kind == "module"]
    asking = sum(1 for sha in mods if (f := origins.flag_features(sha)) is not None and any(n in f for n in rule.needs))
    return asking * 2 > len(mods)


def _entries(link: Link, path: Path, sc: Scan, tc: Toolchain) -> set[int]:
    """Functions run without a caller in the output: ``main``; a shared library's exports."""
    names = {"main", "MAIN__"} if link.kind != "shared" else set()
    if link.kind == "shared":
        text = proc.run([tc.tool("llvm-nm"), "-D", "--defined-only", "-P", str(path)], check=False).stdout
        names |= {line.split()[0] for line in text.splitlines() if line.split()}
    return {i for i, n in enumerate(sc.names) if _plain(n) in names}


def _reach(fn: int, rule: Rule, sc: Scan, g: Graph, entries: set[int], covered, origin_of) -> tuple[bool | None, str]:
    """(False, why) when an unguarded path reaches ``fn``; (True, why) when every reference to it
    is guarded; (None, why) when nothing is known (no reference from code)."""
    memo: dict[int, tuple[bool | None, str]] = {}

    def status(f: int) -> tuple[bool | None, str]:
        if f in memo:
            return memo[f]
        name = _plain(sc.names[f])
        if f in entries:
            return False, f"{name} is {'the entry point' if name in ('main', 'MAIN__') else 'exported'}"
        if f != fn and origin_of(f) and (why := covered(f, rule)):
            return True, f"called from {name}, which may use it ({why})"
        memo[f] = (None, "")  # on the path being judged: decided by the other references
        refs = [(r, direct) for r, direct in g.incoming.get(f, []) if r != f]
        if not refs:
            result: tuple[bool | None, str] = (None, f"no reference to {name} from code (a table of pointers?)")
        else:
            seen: list[tuple[bool | None, str]] = []
            for r, direct in refs:
                rname = _plain(sc.names[r])
                if not direct:
                    seen.append((True, f"its address is taken in {rname} (a dispatch pointer)"))
                elif r in g.checks_cpu:
                    seen.append((True, f"called from {rname}, which checks the CPU"))
                elif not origin_of(r) and r not in entries:
                    seen.append((None, f"called from {rname} (not of the plan)"))
                else:
                    s, why = status(r)
                    seen.append((s, f"called directly from {rname}" + (f" ({why})" if why and s is False else "")
                                 if s is not True else why))
            bad = [w for s, w in seen if s is False]
            if bad:
                result = (False, bad[0])
            elif all(s is True for s, _ in seen):
                result = (True, "; ".join(dict.fromkeys(w for _, w in seen)))
            else:
                result = (None, "; ".join(dict.fromkeys(w for s, w in seen if s is None)))
        memo[f] = result
        return result

    return status(fn)


def _refusal(report: Report, plan: Plan, target: Target) -> IsaRefused:
    rank = {rule: i for rules in RULES.values() for i, rule in enumerate(rules)}
    order = {link.install: i for i, link in enumerate(plan.links)}
    # per function, the most specific feature it lacks (the table's order): avx2 rather than avx
    refused = sorted(report.refused, key=lambda r: (order.get(r.output, 0), r.finding.function,
                                                    rank.get(r.finding.rule, 0)))
    v = refused[0]
    feats = " or ".join(v.finding.rule.needs)
    where = ", ".join(o.describe(plan) for o in v.origins)
    others = list(dict.fromkeys(r.function for r in refused if r.function != v.function))
    more = ""
    if others or report.unjudged:
        shown = f": {', '.join(others[:4])}{', ...' if len(others) > 4 else ''}" if others else ""
        more = f" (and {'at least ' if report.unjudged else ''}{len(others)} more functions{shown})"
    firsts: dict[tuple[str, str], Verdict] = {}
    for r in refused:
        firsts.setdefault((r.output, r.function), r)  # each function's most specific
    for r in list(firsts.values())[1:21]:  # the error names the first one
        log.warning(f"bake: ISA check: also {r.output}: {r.finding.insn} in {r.function} "
                    f"({', '.join(o.describe(plan) for o in r.origins)}) needs {' or '.join(r.finding.rule.needs)}: "
                    f"{r.why}")
    hint = (f"{v.function}: {v.why}. Bake for a target that has {feats}, rebuild that code for {target.name}, "
            "or run it only after a CPU check (in a function with its own __attribute__((target(...))), or "
            "through a pointer chosen at run time); 'bakery bake --no-isa-check' bakes it anyway")
    return IsaRefused(f"refused: {v.output}: {v.finding.insn.split()[0]} in function {v.function} (from {where}) "
                      f"needs {feats}, which {target.name} lacks{more}", hint)


__all__ = ["AARCH64", "RULES", "X86_64", "IsaRefused", "Report", "Rule", "check", "classify", "missing", "needs",
           "parse", "scan", "target_features"]
