"""End to end on every example: capture once, bake, run verify, compare with a from-source build."""

import pytest
from helpers import EXAMPLE_NAMES, disassembly, run_verify


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
@pytest.mark.parametrize("target", ["x86_64", "x86_64_v4"])
def test_baked_matches_from_source(builds, name, target):
    baked = builds.baked(name, target)
    reference = builds.from_source(name)
    assert run_verify(name, baked) == run_verify(name, reference)


@pytest.mark.slow
def test_kernel_vector_width_follows_target(builds):
    """The whole point: the same IR becomes AVX-512 code for v4 and SSE code for x86_64."""
    symbol = builds.recipe("kernel").bench.symbol
    v4 = disassembly(builds.baked("kernel", "x86_64_v4") / "kernel", symbol)
    generic = disassembly(builds.baked("kernel", "x86_64") / "kernel", symbol)
    assert "zmm" in v4 or "ymm" in v4
    assert "xmm" in generic and "ymm" not in generic and "zmm" not in generic


@pytest.mark.slow
def test_kernel_bake_equals_from_source_codegen(builds):
    """Retargeted bitcode gives the same instructions as compiling the source with the same flags."""
    symbol = builds.recipe("kernel").bench.symbol
    baked = disassembly(builds.baked("kernel", "x86_64_v3") / "kernel", symbol)
    source = disassembly(builds.from_source("kernel", "x86_64_v3") / "kernel", symbol)

    def body(text):
        return [line.split("\t", 1)[-1].split("#")[0].strip() for line in text.splitlines() if "\t" in line]

    assert [i.split()[0] for i in body(baked)] == [i.split()[0] for i in body(source)]


@pytest.mark.slow
@pytest.mark.parametrize("lto", ["thin", "full"])
def test_lto_modes(builds, lto):
    assert run_verify("shapes", builds.baked("shapes", "x86_64_v3", lto)) == run_verify("shapes", builds.from_source("shapes"))


@pytest.mark.slow
def test_shared_library_travels_with_binary(builds):
    baked = builds.baked("shapes", "x86_64")
    assert (baked / "libreport.so.1").is_file()
    assert (builds.baked("wordstat", "x86_64") / "libwordstat.so.1").is_file()
