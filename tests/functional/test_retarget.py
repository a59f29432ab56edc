"""Retargeting rewrites the attributes that would otherwise pin every function to the capture's CPU."""

import subprocess

import pytest

from bakery.bake import retarget_ir
from bakery.target import resolve

SOURCE = r"""
void saxpy(float *restrict y, const float *restrict x, float a, int n) {
  for (int i = 0; i < n; i++) y[i] = a * x[i] + y[i];
}
__attribute__((target("avx2"))) void add_avx2(float *restrict y, const float *restrict x, int n) {
  for (int i = 0; i < n; i++) y[i] += x[i];
}
"""


@pytest.fixture(scope="module")
def ir(toolchain, tmp_path_factory):
    d = tmp_path_factory.mktemp("ir")
    (d / "k.c").write_text(SOURCE)
    subprocess.run([toolchain.clang, "-O2", "-Xclang", "-disable-llvm-optzns", "-emit-llvm", "-S",
                    str(d / "k.c"), "-o", str(d / "k.ll")], check=True)
    return (d / "k.ll").read_text()


def compile_ir(toolchain, text, flags, tmp_path):
    obj = tmp_path / "k.o"
    subprocess.run([toolchain.clang, "-c", "-x", "ir", "-", "-o", str(obj), "-w", "-O2", *flags],
                   input=text, text=True, check=True)
    return lambda sym: subprocess.run(["objdump", "-d", f"--disassemble={sym}", str(obj)],
                                      capture_output=True, text=True, check=True).stdout


def test_capture_ir_has_no_optnone_and_pins_generic_cpu(ir):
    assert "optnone" not in ir
    assert '"target-cpu"="x86-64"' in ir


def test_without_rewrite_the_bake_stays_generic(toolchain, ir, tmp_path):
    """The trap: -march alone does not beat the per-function attributes."""
    dis = compile_ir(toolchain, ir, ["-march=x86-64-v4"], tmp_path)
    assert "ymm" not in dis("saxpy") and "zmm" not in dis("saxpy")


def test_rewrite_gives_target_code(toolchain, ir, tmp_path):
    t = resolve("x86_64_v4", compiler_version=toolchain.version, family="x86_64")
    text, stats = retarget_ir(ir, t.tune)
    assert '"target-cpu"' not in text
    assert stats["kept_features"] == 1  # add_avx2's own target attribute
    dis = compile_ir(toolchain, text, list(t.flags), tmp_path)
    # Plain -march=x86-64-v4, as a user types it: the level's own tuning prefers 256-bit vectors
    # (archspec's added -mtune=generic gave zmm here).
    assert t.tune is None and "ymm" in dis("saxpy") and "zmm" not in dis("saxpy")


def test_rewrite_keeps_function_multiversioning(toolchain, ir, tmp_path):
    text, _ = retarget_ir(ir, None)
    dis = compile_ir(toolchain, text, ["-march=x86-64"], tmp_path)
    assert "ymm" in dis("add_avx2")     # its target("avx2") survives a generic bake
    assert "ymm" not in dis("saxpy")


def test_tune_cpu_follows_target(toolchain, ir):
    text, _ = retarget_ir(ir, "znver3")
    assert '"tune-cpu"="znver3"' in text and '"tune-cpu"="generic"' not in text
    text, _ = retarget_ir(ir, None)
    assert '"tune-cpu"' not in text
