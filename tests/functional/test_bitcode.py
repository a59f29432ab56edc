"""The bake's bitcode path (bakery.bake.bitcode): what clang makes of real C, and what a bake makes
of it, against the text path (llvm-dis, the checks, the rewrite)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from helpers import write_project

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery.bake import bitcode, pipeline
from bakery.capture.attrs import features_of, untarget

PLAIN_C = r"""
#include <string.h>
static double table[64] = {1.5, 2.5, 3.5};
struct point { double x, y; };
double norm(const struct point *p, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += p[i].x * p[i].x + p[i].y * p[i].y + table[i & 63];
    return s;
}
__attribute__((target("avx2"))) int wide(const int *a, int n) { int s = 0; for (int i = 0; i < n; i++) s += a[i]; return s; }
const char *greet(void) { static char buf[32]; strcpy(buf, "hello"); return buf; }
"""


def _bitcode(toolchain, tmp: Path, source: str, *, strip: bool = True) -> bytes:
    (tmp / "u.c").write_text(source)
    bc = tmp / "u.bc"
    subprocess.run([toolchain.clang, "-O2", "-Xclang", "-disable-llvm-optzns", "-emit-llvm", "-c", str(tmp / "u.c"),
                    "-o", str(bc)], check=True)
    if strip:
        probe = subprocess.run([toolchain.clang, "-O2", "-S", "-emit-llvm", "-x", "c", "-", "-o", "-"],
                               input="int f(void) { return 0; }\n", capture_output=True, text=True, check=True).stdout
        text = subprocess.run([toolchain.tool("llvm-dis"), str(bc), "-o", "-"], capture_output=True, text=True,
                              check=True).stdout
        subprocess.run([toolchain.tool("llvm-as"), "-", "-o", str(bc)], input=untarget(text, features_of(probe)),
                       text=True, check=True)
    return bc.read_bytes()


def test_a_module_without_baseline_attributes_is_plain_and_keeps_its_own_features(toolchain, tmp_path):
    data = _bitcode(toolchain, tmp_path, PLAIN_C)
    assert bitcode.plain(data) is None
    text = subprocess.run([toolchain.tool("llvm-dis"), "-", "-o", "-"], input=data, capture_output=True,
                          check=True).stdout.decode()
    assert '"target-cpu"' not in text and '"tune-cpu"' not in text
    own = [line for line in text.splitlines() if '"target-features"' in line]
    assert len(own) == 1 and "+avx2" in own[0] and "+sse2" not in own[0]  # the function's own, not the baseline


@pytest.mark.parametrize("source, why", [
    ("int f(int x) { return x; }\n", "a target-cpu attribute"),
])
def test_baseline_attributes_left_are_not_plain(toolchain, tmp_path, source, why):
    assert bitcode.plain(_bitcode(toolchain, tmp_path, source, strip=False)) == why


@pytest.mark.parametrize("source, why", [
    ('int f(int x) { __asm__ volatile("nop"); return x; }\n', "inline asm"),
    ('__asm__(".globl marker\\nmarker:");\nint f(void) { return 1; }\n', "module asm"),
    ('#pragma comment(lib, "m")\nint f(void) { return 1; }\n', "named metadata llvm.dependent-libraries"),
])
def test_what_the_text_path_must_check_is_not_plain(toolchain, tmp_path, source, why):
    assert bitcode.plain(_bitcode(toolchain, tmp_path, source)) == why


def test_damaged_bitcode_llvm_still_reads_is_never_plain_where_llvm_sees_asm(toolchain, tmp_path):
    """Random damage to a module with inline asm: wherever LLVM's own reader (llvm-dis) still
    reads it and sees asm, this reader must not call it plain."""
    data = _bitcode(toolchain, tmp_path, PLAIN_C + 'int g(int x) { __asm__ volatile(".incbin \\"/etc/hostname\\""); '
                                                   'return x; }\n')
    assert bitcode.plain(data) == "inline asm"
    rng = random.Random(1)
    read_with_asm = 0
    for _ in range(200):
        mutant = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutant[rng.randrange(4, len(mutant))] ^= 1 << rng.randrange(8)
        dis = subprocess.run([toolchain.tool("llvm-dis"), "-", "-o", "-"], input=bytes(mutant), capture_output=True)
        if dis.returncode == 0 and " asm " in dis.stdout.decode(errors="replace"):
            read_with_asm += 1
            assert bitcode.plain(bytes(mutant)) is not None
    assert read_with_asm > 20  # the damage LLVM reads past is tried, not only what it refuses
    assert bitcode.plain(data[: len(data) // 2]) is not None and bitcode.plain(b"BC\xc0\xde" + bytes(40)) is not None


FILES = {
    "main.c": "#include <stdio.h>\nint sum(const int *, int);\n__attribute__((target(\"avx2\"))) int wide(const int *, int);\n"
              "int main(void) { int a[100]; for (int i = 0; i < 100; i++) a[i] = i * 3;\n"
              "  printf(\"%d %d\\n\", sum(a, 100), wide(a, 100)); return 0; }\n",
    "sum.c": "int sum(const int *a, int n) { int s = 0; for (int i = 0; i < n; i++) s += a[i] * a[i]; return s; }\n"
             "__attribute__((target(\"avx2\"))) int wide(const int *a, int n) { int s = 0;\n"
             "  for (int i = 0; i < n; i++) s += a[i] + 1; return s; }\n",
    "Makefile": "app: main.c sum.c\n\t$(CC) -O2 -o app main.c sum.c\n",
}
REST = """\
    build:
      system: make
      options: [app]
    outputs: [app]
    """


def test_the_bitcode_path_makes_what_the_text_path_makes(toolchain, builds, tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    recipe_file = write_project(tmp_path / "p", "bcpath", FILES, REST)
    capturemod.capture(recipemod.load(recipe_file), tmp_path / "b", toolchain)
    plan = planmod.load(tmp_path / "b")
    assert all(m.untargeted for m in plan.modules.values())
    target = builds.target("zen4")  # tuned for its own CPU: no tune-cpu to write, the bitcode path
    fast = bakemod.bake(tmp_path / "b", plan, toolchain, target, tmp_path / "fast")
    assert fast.timings and fast.timings.phases["scan"] > 0 and fast.timings.phases["disassemble"] == 0
    monkeypatch.setattr(pipeline, "_plain_bitcode", lambda *a, **k: None)
    text = bakemod.bake(tmp_path / "b", plan, toolchain, target, tmp_path / "text")
    assert text.timings and text.timings.phases["disassemble"] > 0
    assert (tmp_path / "fast" / "app").read_bytes() == (tmp_path / "text" / "app").read_bytes()


def test_the_text_path_gives_an_untargeted_module_the_tuning_of_its_target(toolchain, tmp_path):
    """x86_64 bakes -march=x86-64 -mtune=generic, as plain `clang -O2` does: opt has no -mtune, so
    that module takes the text path, which must write tune-cpu back on every function it defines."""
    from bakery.bake.retarget import retarget_ir

    data = _bitcode(toolchain, tmp_path, PLAIN_C)
    text = subprocess.run([toolchain.tool("llvm-dis"), "-", "-o", "-"], input=data, capture_output=True,
                          check=True).stdout.decode()
    out, _ = retarget_ir(text, "generic", untargeted=True)
    groups = {line.split()[1]: line for line in out.splitlines() if line.startswith("attributes #")}
    defined = [line.rsplit("#", 1)[1].split()[0] for line in out.splitlines() if line.startswith("define ")]
    assert len(defined) == 3 and all('"tune-cpu"="generic"' in groups["#" + g] for g in defined)
    assert "+avx2" in out  # the function's own features stay


class _Writer:
    """A bitstream writer for hand-made files: the shapes clang never writes."""

    def __init__(self) -> None:
        self.bits: list[int] = []
        self.width = [2]

    def fixed(self, v: int, n: int) -> None:
        self.bits += [(v >> i) & 1 for i in range(n)]

    def vbr(self, v: int, n: int) -> None:
        while True:
            chunk, v = v & ((1 << (n - 1)) - 1), v >> (n - 1)
            self.fixed(chunk | ((1 << (n - 1)) if v else 0), n)
            if not v:
                return

    def align(self) -> None:
        while len(self.bits) % 32:
            self.bits.append(0)

    def enter(self, block: int, width: int = 3) -> int:
        self.fixed(1, self.width[-1]); self.vbr(block, 8); self.vbr(width, 4); self.align()  # noqa: E702
        at = len(self.bits)
        self.fixed(0, 32)  # the length, patched by end()
        self.width.append(width)
        return at

    def end(self, at: int) -> None:
        self.fixed(0, self.width.pop()); self.align()  # noqa: E702
        words = (len(self.bits) - at - 32) // 32
        self.bits[at:at + 32] = [(words >> i) & 1 for i in range(32)]

    def record(self, code: int, ops: list[int]) -> None:
        self.fixed(3, self.width[-1]); self.vbr(code, 6); self.vbr(len(ops), 6)  # noqa: E702
        for o in ops:
            self.vbr(o, 6)

    def data(self) -> bytes:
        self.align()
        return b"BC\xc0\xde" + bytes(sum(b << i for i, b in enumerate(self.bits[k:k + 8]))
                                     for k in range(0, len(self.bits), 8))


def _module(*, blockinfos: int = 1, top_blockinfo: bool = False, fnentry_shift: int = 0) -> bytes:
    w = _Writer()
    if top_blockinfo:
        w.end(w.enter(0))
    m = w.enter(8)
    for _ in range(blockinfos):
        w.end(w.enter(0))
    w.record(1, [2])                                   # MODULE_CODE_VERSION 2
    vst = w.enter(14)                                  # the module's symbol table, pointing at...
    w.record(3, [0, (len(w.bits) + 32 * 40) // 32 + fnentry_shift])
    w.end(vst)
    w.end(m)
    return w.data()


def test_hand_made_shapes_where_the_readers_could_disagree_are_not_plain():
    assert bitcode.plain(_module()) == "a function offset in the symbol table that is not a function block"
    assert bitcode.plain(_module(blockinfos=0, fnentry_shift=0)) is not None
    assert bitcode.plain(_module(blockinfos=2)) == "block info other than one in the module"
    assert bitcode.plain(_module(top_blockinfo=True)) == "a top-level block 0"
    ok = _Writer()
    m = ok.enter(8)
    ok.end(ok.enter(0))
    ok.record(1, [2])
    ok.end(m)
    assert bitcode.plain(ok.data()) is None  # the writer makes what the reader reads


def _function_records(ops: list[list[int]], after: tuple[int, int] | None = None) -> bytes:
    """A module with a function block of unabbreviated records, and then, in the module, a
    constants block holding one record ``after`` (code, operand)."""
    w = _Writer()
    m = w.enter(8)
    w.end(w.enter(0))
    w.record(1, [2])
    fn = w.enter(12, width=4)
    for k, o in enumerate(ops):
        w.record(k % 64, o)
    w.end(fn)
    if after is not None:
        c = w.enter(11)
        w.record(after[0], [after[1]])
        w.end(c)
    w.end(m)
    return w.data()


def test_instruction_operands_are_stepped_over_to_the_bit():
    """A function's operands are not kept, only stepped over, ten VBR-6 chunks at a time: values of
    every length, records of every count, and what follows is still read where it is."""
    rng = random.Random(7)
    ops = [[rng.getrandbits(rng.choice((1, 4, 5, 6, 10, 20, 33, 49, 50, 51, 55, 64))) for _ in range(n)]
           for n in list(range(30)) * 3]
    assert bitcode.plain(_function_records(ops)) is None
    assert bitcode.plain(_function_records(ops, after=(30, 0))) == "inline asm"  # found where it is
    assert bitcode.plain(_function_records(ops, after=(4, 5))) is None          # CST_CODE_INTEGER
    assert bitcode.plain(_function_records([[1, 2], [1 << 70]])) == "a VBR value over 64 bits"


def test_outputs_of_plain_modules_alone_are_not_disassembled_by_the_isa_check(toolchain, builds, tmp_path,
                                                                               monkeypatch):
    """Compiled from bitcode for the target, with no asm and no -m feature flags, a module cannot
    hold more than the target: its outputs are not disassembled (LAMMPS: seconds), from a fresh
    bake or from the object cache."""
    from bakery.bake import isacheck

    (tmp_path / "p").mkdir()
    recipe_file = write_project(tmp_path / "p", "bcplain", FILES, REST)
    capturemod.capture(recipemod.load(recipe_file), tmp_path / "b", toolchain)
    plan = planmod.load(tmp_path / "b")

    def refuse(*a, **k):
        raise AssertionError("disassembled")

    monkeypatch.setattr(isacheck, "disassembly", refuse)
    for out in ("o1", "o2"):  # the second from the object cache
        bakemod.bake(tmp_path / "b", plan, toolchain, builds.target("x86_64_v2"), tmp_path / out,
                     cache=tmp_path / "cache")
    assert (tmp_path / "o1" / "app").read_bytes() == (tmp_path / "o2" / "app").read_bytes()
