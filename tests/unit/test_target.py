import archspec.cpu
import pytest

from bakery import target
from bakery.errors import BakeryError


def test_native_is_archspec_host():
    t = target.resolve("native", compiler_version="16.0.6", family=archspec.cpu.host().family.name)
    assert t.name == archspec.cpu.host().name or "ancestor" in " ".join(t.notes)
    assert t.requested == "native"


@pytest.mark.parametrize("name,flag", [("x86_64", "-march=x86-64"), ("x86_64_v3", "-march=x86-64-v3"),
                                       ("zen3", "-march=znver3"), ("skylake_avx512", "-march=skylake-avx512"),
                                       ("sapphirerapids", "-march=sapphirerapids")])
def test_flags_from_archspec(name, flag):
    assert flag in target.resolve(name, compiler_version="16.0.6", family="x86_64").flags


def test_too_new_target_is_clamped_with_a_reason():
    t = target.resolve("zen5", compiler_version="16.0.6", family="x86_64")
    assert t.name == "zen4"
    assert any("cannot target zen5" in n for n in t.notes)
    assert any("zen4" in n for n in t.notes)


def test_unknown_target_suggests_names():
    with pytest.raises(BakeryError) as e:
        target.lookup("zen33")
    assert "zen3" in e.value.hint


def test_other_isa_is_refused():
    with pytest.raises(BakeryError, match="aarch64"):
        target.resolve("neoverse_v1", compiler_version="16.0.6", family="x86_64")


def test_aarch64_targets_resolve():
    t = target.resolve("neoverse_v1", compiler_version="16.0.6", family="aarch64")
    assert any(f.startswith(("-march=", "-mcpu=")) for f in t.flags)
