"""The bake's ISA check (bakery.bake.isacheck): an output with an instruction its target lacks is
refused, naming the instruction, the function and the object; runtime dispatch passes. Real
captures of small projects with hand-written AVX2 assembly (kept as a native object by the
capture), real bakes, and runs under qemu-user's Nehalem (an x86-64-v2 CPU)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import write_project

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery.bake import isacheck
from bakery.cli import main

# int sum8_avx2(const int *p): the sum of p[0..7], with AVX2 (a prebuilt object in the plan).
SUM8 = """\
    .text
    .globl sum8_avx2
    .type sum8_avx2, @function
sum8_avx2:
    vmovdqu (%rdi), %ymm0
    vextracti128 $1, %ymm0, %xmm1
    vpaddd %xmm1, %xmm0, %xmm0
    vphaddd %xmm0, %xmm0, %xmm0
    vphaddd %xmm0, %xmm0, %xmm0
    vmovd %xmm0, %eax
    vzeroupper
    ret
    .size sum8_avx2, .-sum8_avx2
    .section .note.GNU-stack,"",@progbits
"""
MAKE = ("all: app\n"
        "sum8.o: sum8.S\n\t$(CC) -c sum8.S -o sum8.o\n"
        "app: main.c sum8.o\n\t$(CC) -O2 -o app main.c sum8.o\n")
# The leak: main calls the AVX2 assembly whatever the CPU.
LEAK_MAIN = """\
#include <stdio.h>
int sum8_avx2(const int *p);
static int v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
int main(void) { printf("sum %d\\n", sum8_avx2(v)); return 0; }
"""
# Runtime dispatch, run only after __builtin_cpu_supports("avx2"): AVX2 code in a function of its
# own target, in a file compiled with -mavx2 (as dispatch libraries build their SIMD files), and
# the AVX2 assembly; plain code otherwise.
DISPATCH_MAIN = """\
#include <stdio.h>
int sum8_avx2(const int *p);
int total_file(const int *p, int n);
__attribute__((target("avx2"))) __attribute__((noinline)) static int total_avx2(const int *p, int n) {
    int s = 0;
    for (int i = 0; i < n; i++) s += p[i] * 3;
    return s;
}
__attribute__((noinline)) static int total_plain(const int *p, int n) {
    int s = 0;
    for (int i = 0; i < n; i++) s += p[i] * 3;
    return s;
}
static int v[64];
int main(void) {
    for (int i = 0; i < 64; i++) v[i] = i;
    int avx2 = __builtin_cpu_supports("avx2");
    int t = avx2 ? total_avx2(v, 64) : total_plain(v, 64);
    int f = avx2 ? total_file(v, 64) : total_plain(v, 64);
    int s = avx2 ? sum8_avx2(v) : v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    printf("total %d %d sum %d\\n", t, f, s);
    return 0;
}
"""
KERNEL = "int total_file(const int *p, int n) { int s = 0; for (int i = 0; i < n; i++) s += p[i] * 3; return s; }\n"
DISPATCH_MAKE = MAKE.replace("app: main.c sum8.o\n\t$(CC) -O2 -o app main.c sum8.o\n",
                             "kernel.o: kernel.c\n\t$(CC) -O2 -mavx2 -c kernel.c -o kernel.o\n"
                             "app: main.c sum8.o kernel.o\n\t$(CC) -O2 -o app main.c sum8.o kernel.o\n")
# A flag leak: the whole build asks for AVX2 (CFLAGS=-mavx2), main's own loop is AVX2 code.
FLAGS_MAIN = """\
#include <stdio.h>
static int v[64];
int main(int argc, char **argv) {
    (void)argv;
    int s = 0;
    for (int i = 0; i < 64; i++) v[i] = i * argc;
    for (int i = 0; i < 64; i++) s += v[i] * 3;
    printf("total %d\\n", s);
    return 0;
}
"""
FLAGS_MAKE = "all: app\napp: main.c\n\t$(CC) -O2 -mavx2 -o app main.c\n"
QEMU = "qemu-x86_64-static"
SIGILL = (132, -4)


def _bundle(tmp: Path, toolchain, name: str, files: dict[str, str]) -> Path:
    if toolchain.family != "x86_64":
        pytest.skip("the assembly is x86-64")
    recipe = recipemod.load(write_project(tmp, name, files, """\
        build:
          system: make
          options: [all]
        outputs: [app]
        """))
    capturemod.capture(recipe, tmp / "bundle", toolchain)
    return tmp / "bundle"


@pytest.fixture(scope="module")
def leak(tmp_path_factory, toolchain) -> Path:
    return _bundle(tmp_path_factory.mktemp("leak"), toolchain, "leak",
                   {"main.c": LEAK_MAIN, "sum8.S": SUM8, "Makefile": MAKE})


@pytest.fixture(scope="module")
def dispatch(tmp_path_factory, toolchain) -> Path:
    return _bundle(tmp_path_factory.mktemp("dispatch"), toolchain, "dispatch",
                   {"main.c": DISPATCH_MAIN, "kernel.c": KERNEL, "sum8.S": SUM8, "Makefile": DISPATCH_MAKE})


def _qemu(cpu: str, exe: Path) -> subprocess.CompletedProcess:
    if not shutil.which(QEMU):
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-user-static)")
    return subprocess.run([QEMU, "-cpu", cpu, str(exe)], capture_output=True, text=True, timeout=120)


def test_the_assembly_is_a_prebuilt_object_of_the_plan(leak):
    plan = planmod.load(leak)
    assert [o.name for o in plan.objects.values()] == ["sum8.o"]


def test_a_prebuilt_avx2_object_in_a_v2_bake_is_refused(leak, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["bake", str(leak), "-t", "x86_64_v2", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 3, err
    line = next(l for l in err.splitlines() if "refused:" in l)
    obj = next(iter(planmod.load(leak).objects.values()))
    # the instruction, the function, the object (its build name and its file in the bundle)
    assert "refused: app: vextracti128 in function sum8_avx2 (from object sum8.o: " in line, err
    assert obj.path in line and "needs avx2, which x86_64_v2 lacks" in line, err
    assert "called directly from main" in err and "--no-isa-check" in err, err
    assert "Traceback" not in err
    assert not out.exists(), "nothing may be written for a refused bake"


def test_the_same_plan_bakes_for_x86_64_v3(leak, tmp_path, builds):
    out = tmp_path / "out"
    bakemod.bake(leak, planmod.load(leak), builds.tc, builds.target("x86_64_v3"), out)
    cp = _qemu("max", out / "app")
    assert cp.returncode == 0 and cp.stdout == "sum 36\n", (cp.returncode, cp.stderr)


def test_an_output_whose_asm_and_objects_alone_hold_nothing_to_judge_is_not_disassembled(leak, tmp_path, builds):
    """For x86_64_v3 the AVX2 object is no finding: only it is disassembled, not the program (GSL:
    libgsl.so of 774 modules with one that has asm, 1.3 s less); for x86_64_v2 the program is."""
    from bakery.bake import isacheck

    seen: list[str] = []
    real = isacheck.disassembly

    def spy(objdump, path):
        seen.append(Path(path).name)
        return real(objdump, path)

    plan = planmod.load(leak)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(isacheck, "disassembly", spy)
        bakemod.bake(leak, plan, builds.tc, builds.target("x86_64_v3"), tmp_path / "v3")
        assert len(seen) == 1 and seen[0].endswith(".o"), seen   # the object, not app
        seen.clear()
        with pytest.raises(isacheck.IsaRefused):
            bakemod.bake(leak, plan, builds.tc, builds.target("x86_64_v2"), tmp_path / "v2")
        assert len(seen) == 2 and seen[1] == "app", seen   # the object had a finding: the program is judged


def test_no_isa_check_bakes_it_anyway_and_the_binary_dies_of_sigill_on_a_v2_cpu(leak, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bake", str(leak), "-t", "x86_64_v2", "-o", str(out), "-q", "--no-isa-check"]) == 0
    assert _qemu("Nehalem", out / "app").returncode in SIGILL  # what the check spares users


def test_runtime_dispatch_passes_in_a_v2_bake_and_runs_on_a_v2_cpu(dispatch, tmp_path, builds, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG, logger="bakery.bake.isacheck"):
        bakemod.bake(dispatch, planmod.load(dispatch), builds.tc, builds.target("x86_64_v2"), out)
    # the check saw the AVX2 code and let it through, and why
    assert "behind runtime dispatch" in caplog.text and "total_avx2" in caplog.text, caplog.text
    assert "sum8_avx2: called from main, which checks the CPU" in caplog.text, caplog.text
    objdump = builds.tc.tool("llvm-objdump")
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", "--disassemble-symbols=total_avx2",
                           str(out / "app")], capture_output=True, text=True, check=True).stdout
    assert "%ymm" in text  # compiled for AVX2 indeed
    expect = f"total {3 * sum(range(64))} {3 * sum(range(64))} sum 28\n"
    low = _qemu("Nehalem", out / "app")
    assert low.returncode == 0 and low.stdout == expect, (low.returncode, low.stderr)
    high = _qemu("max", out / "app")
    assert high.returncode == 0 and high.stdout == expect, (high.returncode, high.stderr)


def test_the_report_names_what_was_let_through(dispatch, tmp_path, builds):
    """check() itself, on the outputs and objects of a kept work tree's links."""
    plan = planmod.load(dispatch)
    target = builds.target("x86_64_v2")
    out = tmp_path / "out"
    bakemod.bake(dispatch, plan, builds.tc, target, out, isa_check=False)
    objects = {sha: dispatch / o.path for sha, o in plan.objects.items()}
    objects |= {sha: dispatch / m.path for sha, m in plan.modules.items()}  # llvm-nm reads the bitcode
    report = isacheck.check(dispatch, plan, builds.tc, target, {plan.links[0].id: out / "app"}, objects)
    reasons = {v.function: v.why for v in report.allowed}
    assert reasons["total_avx2"] == "its own target attribute", reasons
    assert reasons["total_file"] == "its module's -m flags", reasons
    assert "checks the CPU" in reasons["sum8_avx2"], reasons
    assert not report.refused and report.outputs == 1


def test_a_build_wide_mavx2_is_a_flag_leak_in_a_v2_bake(tmp_path, toolchain, capsys):
    """-mavx2 on every file is the build's baseline, not dispatch: main itself is AVX2 code."""
    bundle = _bundle(tmp_path, toolchain, "flags", {"main.c": FLAGS_MAIN, "Makefile": FLAGS_MAKE})
    assert "-mavx2" in next(iter(planmod.load(bundle).modules.values())).flags  # kept on purpose by the capture
    rc = main(["bake", str(bundle), "-t", "x86_64_v2", "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 3 and "in function main (from module main.c) needs avx2, which x86_64_v2 lacks" in err, err
    assert main(["bake", str(bundle), "-t", "x86_64_v3", "-o", str(tmp_path / "v3"), "-q"]) == 0


# long vl_sve(void): the SVE vector length in 32-bit lanes (SVE, without a vector register).
VL_SVE = """\
    .arch armv8-a+sve
    .text
    .globl vl_sve
    .type vl_sve, %function
vl_sve:
    cntw x0
    ret
    .size vl_sve, .-vl_sve
    .section .note.GNU-stack,"",@progbits
"""
VL_MAIN = '#include <stdio.h>\nlong vl_sve(void);\nint main(void) { printf("sve %d\\n", vl_sve() > 0); return 0; }\n'


def test_sve_assembly_in_an_arm64_bake_for_a_cpu_without_sve_is_refused(tmp_path, toolchain, capsys):
    from bakery import toolchain as toolchainmod
    from bakery.errors import BakeryError

    try:
        arm = toolchain.for_triple(toolchainmod.triple_of_platform("linux/arm64"))
    except BakeryError as e:  # no arm64 sysroot here
        pytest.skip(e.message)
    recipe = recipemod.load(write_project(tmp_path, "sve", {
        "main.c": VL_MAIN, "vl.S": VL_SVE,
        "Makefile": "all: app\nvl.o: vl.S\n\t$(CC) -c vl.S -o vl.o\napp: main.c vl.o\n\t$(CC) -O2 -o app main.c vl.o\n",
    }, "build:\n  system: make\n  options: [all]\noutputs: [app]\n"))
    capturemod.capture(recipe, tmp_path / "bundle", arm)
    rc = main(["bake", str(tmp_path / "bundle"), "-t", "neoverse_n1", "-o", str(tmp_path / "n1"), "-q"])
    err = capsys.readouterr().err
    assert rc == 3 and "refused: app: cntw in function vl_sve (from object vl.o: " in err, err
    assert "needs sve, which neoverse_n1 lacks" in err, err
    assert main(["bake", str(tmp_path / "bundle"), "-t", "neoverse_v1", "-o", str(tmp_path / "v1"), "-q"]) == 0
    qemu = shutil.which("qemu-aarch64-static")
    if qemu:
        cp = subprocess.run([qemu, "-cpu", "max", "-L", "/usr/aarch64-linux-gnu", str(tmp_path / "v1" / "app")],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0 and cp.stdout == "sve 1\n", (cp.returncode, cp.stderr)
