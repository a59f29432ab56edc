"""#ifdef __AVX2__ code: captured once per ISA level, the bake picks the right one."""

import shutil
import subprocess

import pytest
from helpers import EXAMPLES

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery.target import best_level

pytestmark = pytest.mark.slow


def path_taken(bindir) -> str:
    cp = subprocess.run([str(bindir / "dotbench"), "10", "256"], capture_output=True, text=True, check=True)
    return cp.stderr.split("path=")[1].split()[0]


def modules_by_source(bundle):
    return {m.source: m for m in planmod.load(bundle).modules.values()}


def test_sensitive_unit_is_captured_per_level(builds):
    mods = modules_by_source(builds.bundle("simd"))
    dot, main = mods["dot.c"], mods["main.c"]
    assert [v.level for v in dot.variants] == ["x86_64_v3", "x86_64_v4"]  # v2 preprocesses like x86_64
    assert dot.macros == ("__AVX2__", "__AVX512F__", "__FMA__")
    assert not main.variants  # neutral units are captured once


@pytest.mark.parametrize("target,path", [("x86_64", "sse2"), ("x86_64_v2", "sse2"), ("haswell", "avx2"),
                                         ("zen3", "avx2"), ("x86_64_v4", "avx512"), ("icelake", "avx512")])
def test_bake_takes_the_targets_simd_path(builds, target, path):
    assert path_taken(builds.baked("simd", target)) == path


def test_detection_off_keeps_the_generic_path(builds, tmp_path):
    src = tmp_path / "simd"
    shutil.copytree(EXAMPLES / "simd", src)
    with open(src / "recipe.yaml", "a") as f:
        f.write("capture:\n  detect: false\n")
    bundle = tmp_path / "bundle"
    capturemod.capture(recipemod.load(src / "recipe.yaml"), bundle, builds.tc)
    assert not any(m.variants for m in modules_by_source(bundle).values())
    out = tmp_path / "v4"
    bakemod.bake(bundle, planmod.load(bundle), builds.tc, builds.target("x86_64_v4"), out)
    assert path_taken(out) == "sse2"  # the silent failure this feature exists to prevent


def test_pinned_levels(builds, tmp_path):
    src = tmp_path / "simd"
    shutil.copytree(EXAMPLES / "simd", src)
    with open(src / "recipe.yaml", "a") as f:
        f.write("capture:\n  levels: [x86_64, haswell]\n")
    bundle = tmp_path / "bundle"
    capturemod.capture(recipemod.load(src / "recipe.yaml"), bundle, builds.tc)
    assert [v.level for v in modules_by_source(bundle)["dot.c"].variants] == ["haswell"]
    out = tmp_path / "skx"
    res = bakemod.bake(bundle, planmod.load(bundle), builds.tc, builds.target("skylake_avx512"), out)
    assert res.variants == {"dot.c": "haswell"} and path_taken(out) == "avx2"
    # archspec lists rdrand for haswell but not for zen4: a haswell capture does not fit zen4.
    res = bakemod.bake(bundle, planmod.load(bundle), builds.tc, builds.target("zen4"), tmp_path / "z4")
    assert res.variants == {} and path_taken(tmp_path / "z4") == "sse2"


def test_variant_digests_are_checked(builds, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(builds.bundle("simd"), bundle)
    v = modules_by_source(bundle)["dot.c"].variants[-1]
    with open(bundle / v.path, "ab") as f:
        f.write(b"x")
    from bakery.errors import PlanRefused

    with pytest.raises(PlanRefused, match="tampered"):
        bakemod.bake(bundle, planmod.load(bundle), builds.tc, builds.target("x86_64_v4"), tmp_path / "o")


@pytest.mark.parametrize("target,levels,expected", [
    ("zen3", ["x86_64_v2", "x86_64_v3", "x86_64_v4"], "x86_64_v3"),
    ("skylake_avx512", ["x86_64_v3", "x86_64_v4"], "x86_64_v4"),
    ("x86_64", ["x86_64_v3"], None),
    ("cascadelake", ["haswell", "icelake"], "haswell"),
    ("zen2", ["x86_64_v2", "haswell"], "x86_64_v2"),
])
def test_best_level(target, levels, expected):
    assert best_level(target, levels) == expected
