"""LLVM's -O2/-O3 pipeline cut in two: what needs no target runs once at capture, the rest at bake.

A per-module -O2/-O3 pipeline is LLVM's module *simplification* (inlining, SROA, GVN, loop
rotation and unswitching, full unrolling, jump threading, ...) followed by its module
*optimization* (loop vectorization, SLP, partial unrolling, and the cleanups after them, all
driven by the target's cost model), then code generation. The cut is where LLVM starts the
second part (``elim-avail-extern``). The capture runs the first half with a generic target; the
bake runs the second with its target, then codegen. Vectorization, unrolling, instruction
selection and scheduling all see the target; the inliner and the simplification passes see the
generic one (measured: same vector width, run time within noise, see README *Bake speed*).

The halves come from ``opt -print-pipeline-passes``, which does not print every parameter of
the named pipeline, so two are restored and one pass is dropped:

* ``inline`` prints without its threshold: -O3's is 250 (``-inline-threshold=250``), -O2's is
  the default 225;
* ``loop-unroll-full`` prints without its level: -O3 unrolls to a threshold of 300
  (``-unroll-threshold=300``; the -O3 ``loop-unroll<O3>`` of the second half has that too);
* ``speculative-execution`` runs at -O2/-O3 only for targets with divergent branches (GPUs), a
  parameter the printed form loses: kept, it would run on every CPU.

Whether the two halves then make exactly what ``opt -O<n>`` makes is checked on a test module
for each toolchain (:func:`halves`); when they do not, nothing is split and the capture keeps
pre-optimization IR, as before.
"""

from __future__ import annotations

import functools
import logging
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bakery import proc
from bakery.capture.flags import SPLIT_LEVELS, split_level  # noqa: F401  (split_level: re-exported)
from bakery.errors import BakeryError
from bakery.toolchain import Toolchain

log = logging.getLogger(__name__)

CUT = "elim-avail-extern"
LEVELS = dict(zip(SPLIT_LEVELS, ((), ("-inline-threshold=250", "-unroll-threshold=300")), strict=True))
# Dropped from the first half (see the module's docstring).
DROPPED = ("speculative-execution",)
# How both halves write bitcode: without the use-list order, which opt keeps by default and which
# follows the order of its in-memory maps, so that the same unit captured twice gave different
# bitcode (same IR text) and its objects were not reused.
WRITE = ("-preserve-bc-uselistorder=false",)

# The self-check: inlining, a vectorizable loop, a fully unrollable loop, a call through a pointer.
_CHECK_C = r"""
static inline int sq(int x) { return x * x; }
static int sum_sq(const int *a, int n) { int s = 0; for (int i = 0; i < n; i++) s += sq(a[i]); return s; }
void saxpy(float *restrict y, const float *restrict x, float a, int n) { for (int i = 0; i < n; i++) y[i] += a * x[i]; }
int fixed(const int *a) { int s = 0; for (int i = 0; i < 8; i++) s += a[i] << i; return s; }
int apply(int (*f)(const int *, int), const int *a, int n) { return f(a, n); }
int top(const int *a, int n) { return apply(sum_sq, a, n) + fixed(a); }
"""


@dataclass(frozen=True)
class Halves:
    level: str                 # -O2 or -O3
    simplify: str              # the capture's half: a -passes= string
    finish: str                # the bake's half
    options: tuple[str, ...]   # opt options both halves take (the restored parameters, WRITE)

    def simplify_argv(self, opt: str, src: str, dest: str) -> list[str]:
        return [opt, f"-passes={self.simplify}", *self.options, src, "-o", dest]

    def finish_argv(self, opt: str, src: str, dest: str, machine: list[str], *, head=(), extra=()) -> list[str]:
        """``head``: passes before the half (a profile's, bakery.bake.profile); ``extra``: options."""
        return [opt, f"-passes={','.join([*head, self.finish])}", *self.options, *extra, *machine, src, "-o", dest]

    def to_json(self) -> dict:
        return {"simplify": self.simplify, "finish": self.finish, "options": list(self.options)}


def split(pipeline: str, level: str) -> Halves:
    """Cut ``opt -print-pipeline-passes`` output where the module optimization starts."""
    parts = pipeline.strip().split(",")
    if CUT not in parts:
        raise BakeryError(f"opt's {level} pipeline has no {CUT} pass to cut at")
    at = parts.index(CUT)
    if ",".join(parts[:at]).count("(") != ",".join(parts[:at]).count(")"):
        raise BakeryError(f"opt's {level} pipeline has {CUT} inside a pass manager, not at the top")
    first = [p for p in parts[:at] if p not in DROPPED]
    second = [p for p in parts[at:] if p not in ("verify", "BitcodeWriterPass")]
    return Halves(level, ",".join(first), ",".join(second), (*LEVELS[level], *WRITE))


@functools.cache
def halves(toolchain: Toolchain, level: str) -> Halves | None:
    """The two halves of ``level`` for this toolchain, or None when they do not remake ``opt
    level`` exactly on the test module (another LLVM, another pipeline)."""
    if level not in LEVELS:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="bakery-passes-") as tmp:
            d = Path(tmp)
            t = _test_module(toolchain, level, d)
            printed = proc.run([toolchain.tool("opt"), level, "-disable-output", "-print-pipeline-passes", t],
                               cwd=d).stdout
            h = split(printed, level)
            same = remakes(toolchain, h, t)
    except BakeryError as e:
        log.info(f"passes: {level} is not split ({e.message})")
        return None
    if not same:
        log.info(f"passes: the two halves of {level} do not remake opt {level} with LLVM {toolchain.major}: "
                 "not split, modules keep pre-optimization IR")
        return None
    return h


def remakes(toolchain: Toolchain, h: Halves, module: str | None = None) -> bool:
    """Whether the first half, a round trip through bitcode, then the second, make what ``opt
    <level>`` makes of the test module (``module``: one made before; local names aside)."""
    opt, dis = toolchain.tool("opt"), toolchain.tool("llvm-dis")
    with tempfile.TemporaryDirectory(prefix="bakery-passes-") as tmp:
        d = Path(tmp)
        t = module or _test_module(toolchain, h.level, d)
        proc.run([opt, h.level, t, "-o", str(d / "whole.bc")], cwd=d)
        proc.run(h.simplify_argv(opt, t, str(d / "half.bc")), cwd=d)
        proc.run(h.finish_argv(opt, str(d / "half.bc"), str(d / "both.bc"), []), cwd=d)
        whole, both = (_unnamed(proc.run([dis, str(d / f), "-o", "-"], cwd=d).stdout.split("\n", 1)[1])
                       for f in ("whole.bc", "both.bc"))
    return whole == both


def _test_module(toolchain: Toolchain, level: str, d: Path) -> str:
    (d / "t.c").write_text(_CHECK_C)
    proc.run([toolchain.clang, *toolchain.cross_flags, level, "-Xclang", "-disable-llvm-optzns",
              "-emit-llvm", "-c", str(d / "t.c"), "-o", str(d / "t.bc")], cwd=d)
    return str(d / "t.bc")


_LOCAL = re.compile(r"%[-A-Za-z$._][-\w$.]*|^[-A-Za-z$._][-\w$.]*(?=:)", re.M)


def _unnamed(text: str) -> str:
    """IR text with local value and block names numbered in order of appearance, per function:
    names are not code, and their suffixes (``%x.i14``) differ after a round trip through bitcode."""
    out = []
    text = re.sub(r"(?m)[ \t]*;.*$", "", text)  # comments: "; preds = ..." is aligned by name length
    for fn in re.split(r"(?m)^(?=define )", text):
        names: dict[str, str] = {}

        def number(m: re.Match, names: dict[str, str] = names) -> str:
            return names.setdefault(m.group(0).lstrip("%"), f"%v{len(names)}")

        out.append(_LOCAL.sub(number, fn))
    return "".join(out)


@functools.cache
def machine(toolchain: Toolchain, flags: tuple[str, ...]) -> list[str]:
    """opt's -mcpu/-mattr for what clang makes of ``flags`` (-march=, -mcpu=, -mavx2, ...): its
    cc1 line's -target-cpu and -target-feature. Tuning is not among them: ``tune-cpu`` is a
    function attribute, written by the bake's rewrite."""
    out = proc.run([toolchain.clang, "-###", *toolchain.cross_flags, *flags, "-c", "-x", "ir", "/dev/null",
                    "-o", "/dev/null"]).stderr
    cc1 = next((line for line in out.splitlines() if '"-cc1"' in line), "")
    argv = shlex.split(cc1)
    cpu, features = None, []
    for a, b in zip(argv, argv[1:], strict=False):
        if a == "-target-cpu":
            cpu = b
        elif a == "-target-feature":
            features.append(b)
    if cpu is None:
        raise BakeryError(f"clang gave no target CPU for {' '.join(flags)}")
    return [f"-mcpu={cpu}", *([f"-mattr={','.join(features)}"] if features else [])]
