"""One recipe, two ISAs: arm64 captured with clang --target on x86, baked off-node, run under qemu-user."""

import os
import subprocess
from pathlib import Path

import pytest
from helpers import run_verify

pytestmark = pytest.mark.slow
ARM = "linux/arm64"
CROSS_EXAMPLES = ["pi", "kernel", "shapes", "wordstat", "simd"]  # fortran: no arm64 flang runtime on x86


@pytest.fixture(scope="module", autouse=True)
def qemu():
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("qemu-user binfmt for aarch64 is not registered (scripts/setup.sh does it)")
    if not Path("/usr/aarch64-linux-gnu/include").exists():
        pytest.skip("no arm64 cross sysroot (apt-get install libc6-dev-arm64-cross ...)")
    os.environ["QEMU_LD_PREFIX"] = "/usr/aarch64-linux-gnu"


def is_aarch64(path: Path) -> bool:
    return "ARM aarch64" in subprocess.run(["file", "-L", str(path)], capture_output=True, text=True).stdout


@pytest.mark.parametrize("name", CROSS_EXAMPLES)
def test_arm64_bake_runs_under_qemu_like_x86(builds, name):
    baked = builds.baked(name, "neoverse_n1", platform=ARM)
    exe = baked / builds.recipe(name).outputs[0].rsplit("/", 1)[-1]
    assert is_aarch64(exe)
    assert run_verify(name, baked) == run_verify(name, builds.from_source(name))


def disasm(path: Path, symbol: str) -> str:
    return subprocess.run(["llvm-objdump-16", "-d", f"--disassemble-symbols={symbol}", str(path)],
                          capture_output=True, text=True, check=True).stdout


def test_two_arm64_targets_differ_in_instructions(builds):
    import re

    n1 = disasm(builds.baked("kernel", "neoverse_n1", platform=ARM) / "kernel", "poly_kernel")
    v1 = disasm(builds.baked("kernel", "neoverse_v1", platform=ARM) / "kernel", "poly_kernel")
    sve = re.compile(r"\bz\d+\.[sd]\b")
    assert not sve.search(n1) and re.search(r"\bv\d+\.4s\b", n1)  # NEON
    assert sve.search(v1)  # SVE
    assert run_verify("kernel", builds.baked("kernel", "neoverse_v1", platform=ARM)) == \
        run_verify("kernel", builds.from_source("kernel"))


@pytest.mark.parametrize("target,path", [("neoverse_n1", "neon"), ("neoverse_v1", "sve"), ("aarch64", "neon")])
def test_arm64_simd_path_follows_target(builds, target, path):
    exe = builds.baked("simd", target, platform=ARM) / "dotbench"
    cp = subprocess.run([str(exe), "10", "256"], capture_output=True, text=True, check=True)
    assert f"path={path}" in cp.stderr


def test_arm64_plan_records_its_isa(builds):
    import json

    plan = json.loads((builds.bundle("pi", ARM) / "plan.json").read_text())
    assert plan["toolchain"]["family"] == "aarch64" and plan["toolchain"]["triple"].startswith("aarch64")


def test_x86_target_for_arm64_ir_is_refused(builds, tmp_path, capsys):
    from bakery.cli import main

    rc = main(["bake", str(builds.bundle("pi", ARM)), "-t", "x86_64_v3", "-o", str(tmp_path / "o")])
    assert rc == 1 and "this IR is aarch64" in capsys.readouterr().err


# -- images: both ISAs under one OCI index ------------------------------------------

@pytest.fixture(scope="module")
def multi(engine, registry, builds):
    from bakery import images as imagemod

    return imagemod.build(builds.recipe("kernel"), engine, registry, tag=f"{registry}/kernel-multi:1.0",
                          platforms=["linux/amd64", "linux/arm64"])


def test_index_lists_both_platforms_each_with_a_plan(multi, registry):
    import json

    from bakery import oci

    reg = oci.Registry(registry)
    index = json.loads(reg.get_manifest("kernel-multi", multi.digest)[0])
    assert index["mediaType"] == oci.INDEX
    plats = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in index["manifests"]}
    assert set(plats) == {"linux/amd64", "linux/arm64"}
    for plat, digest in plats.items():
        plan = json.loads(oci.fetch_plan(reg, "kernel-multi", digest)[0])
        assert plan["toolchain"]["family"] == {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}[plat]


def test_one_ref_bakes_for_both_isas(multi, engine, registry):
    from bakery import images as imagemod

    arm = imagemod.bake(f"{registry}/kernel-multi:1.0", engine, registry, "neoverse_v1")
    x86 = imagemod.bake(f"{registry}/kernel-multi:1.0", engine, registry, "x86_64_v3")
    cfg = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config",
                                     f"docker://{arm.ref.split('@')[0]}"], capture_output=True, text=True,
                                    check=True).stdout)
    assert cfg["architecture"] == "arm64"
    # The arm64 node image runs under qemu-user (binfmt), its output the same as on x86.
    from test_images import run_in_image

    out_arm = run_in_image(engine, arm.ref.split("@")[0], ["kernel", "3"])  # emulated: keep it short
    out_x86 = run_in_image(engine, x86.ref.split("@")[0], ["kernel", "3"])
    assert out_arm == out_x86 and "checksum" in out_arm


import json  # noqa: E402
