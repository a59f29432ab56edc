"""-O2/-O3 cut in two (bakery.passes): the target-independent half at capture, the rest at bake."""

import dataclasses
import json

import pytest
from helpers import write_project

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import passes
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import target as targetmod


@pytest.mark.parametrize("level", ["-O2", "-O3"])
def test_the_halves_remake_the_whole_pipeline(toolchain, level):
    h = passes.halves(toolchain, level)
    assert h is not None, f"LLVM {toolchain.major}'s {level} is not split"
    assert "loop-vectorize" in h.finish and "loop-vectorize" not in h.simplify
    assert "inline" in h.simplify.split(",") and "speculative-execution" not in h.simplify
    assert h.options == (*passes.LEVELS[level], *passes.WRITE)


def test_the_check_sees_a_half_that_lost_a_pass(toolchain):
    h = passes.halves(toolchain, "-O3")
    broken = dataclasses.replace(h, finish=",".join(p for p in h.finish.split(",") if not p.startswith("loop-vectorize")))
    assert not passes.remakes(toolchain, broken)
    assert passes.remakes(toolchain, h)


def test_split_level_of_flags():
    assert passes.split_level(["-O3", "-fPIC"]) == "-O3"
    assert passes.split_level(["-O"]) == "-O2"
    assert passes.split_level(["-Os"]) is None
    assert passes.split_level(["-O2", "-fno-vectorize"]) is None
    assert passes.split_level(["-O2", "-fno-builtin-memcpy"]) is None


def test_cut_must_be_at_the_top_level():
    with pytest.raises(Exception, match="inside a pass manager"):
        passes.split("a,function(b,elim-avail-extern,c),d", "-O2")


SRC = {
    "main.c": """\
        #include <stdio.h>
        float dot(const float *a, const float *b, int n);
        float nov(const float *a, int n);
        int main(void) {
            static float a[1024], b[1024];
            for (int i = 0; i < 1024; i++) { a[i] = i * 0.5f; b[i] = 2.0f; }
            printf("%.1f %.1f\\n", dot(a, b, 1024), nov(a, 1024));
            return 0;
        }
        """,
    "dot.c": "float dot(const float *a, const float *b, int n) { float s = 0; for (int i = 0; i < n; i++) s += a[i] * b[i]; return s; }\n",
    "nov.c": "float nov(const float *a, int n) { float s = 0; for (int i = 0; i < n; i++) s += a[i]; return s; }\n",
    "Makefile": "app: main.c dot.c nov.c\n\t$(CC) -O3 -c main.c\n\t$(CC) -O3 -ffast-math -c dot.c\n"
                "\t$(CC) -O3 -fno-vectorize -c nov.c\n\t$(CC) -o app main.o dot.o nov.o\n",
}


def _capture(tmp_path, toolchain, extra=""):
    recipe = write_project(tmp_path, "split", SRC, """\
        build:
          system: make
        outputs: [app]
        """.rstrip(" ") + extra)
    plan = capturemod.capture(recipemod.load(recipe), tmp_path / "bundle", toolchain)
    return {m["source"]: m for m in plan["modules"].values()}


SPLIT_ALL = "        capture:\n          simplify_min_bytes: 0\n"


def test_capture_simplifies_and_the_bake_runs_the_rest(tmp_path, toolchain):
    modules = _capture(tmp_path, toolchain, SPLIT_ALL)
    assert modules["main.c"]["stage"] == "simplified" and modules["dot.c"]["stage"] == "simplified"
    assert "stage" not in modules["nov.c"], "-fno-vectorize is another pipeline: not split"
    target = targetmod.resolve("x86_64_v3", compiler_version=toolchain.version, family=toolchain.family)
    res = bakemod.bake(tmp_path / "bundle", planmod.load(tmp_path / "bundle"), toolchain, target, tmp_path / "bin")
    phases = res.timings.to_json()["phases"]
    assert phases["optimize"] > 0 and phases["compile"] > 0, json.dumps(phases)
    import subprocess

    out = subprocess.run([str(tmp_path / "bin" / "app")], capture_output=True, text=True, check=True).stdout
    assert out == "523776.0 261888.0\n"
    # The target's half vectorized the loop with the target's width: AVX2's ymm registers.
    dis = subprocess.run([toolchain.tool("llvm-objdump"), "-d", "--no-show-raw-insn", str(tmp_path / "bin" / "app")],
                         capture_output=True, text=True, check=True).stdout
    assert "ymm" in dis


def test_simplify_false_keeps_pre_optimization_ir(tmp_path, toolchain):
    modules = _capture(tmp_path, toolchain, "        capture:\n          simplify: false\n")
    assert all("stage" not in m for m in modules.values())


def test_small_units_keep_pre_optimization_ir(tmp_path, toolchain):
    """By default a unit whose pre-optimization bitcode is under simplify_min_bytes (32 KiB) is
    not split: an opt process at each bake would cost it more than the half it saves. A larger
    threshold than every unit here: none split; 0 (above): all that can be."""
    modules = _capture(tmp_path, toolchain)
    assert all("stage" not in m for m in modules.values()), modules
    sizes = [(tmp_path / "bundle" / m["path"]).stat().st_size for m in modules.values()]
    assert max(sizes) < 32768, sizes
