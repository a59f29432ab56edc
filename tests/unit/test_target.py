import json
from pathlib import Path

import archspec
import archspec.cpu
import pytest

from bakery import target
from bakery.cli import main
from bakery.errors import BakeryError

# Real /proc/cpuinfo files that archspec ships for its own tests.
CPUINFO = Path(archspec.__file__).parent / "json" / "tests" / "targets"
X86 = ("GenuineIntel", "AuthenticAMD")
TARGETS = archspec.cpu.TARGETS


def cpuinfo(name: str) -> tuple[set[str], str]:
    """(flags, vendor_id) of the first processor in one of archspec's cpuinfo files."""
    fields = {}
    for line in (CPUINFO / name).read_text().splitlines():
        key, sep, value = line.partition(":")
        if not sep and fields:
            break
        fields.setdefault(key.strip(), value.strip())
    return set(fields.get("flags", "").split()), fields.get("vendor_id", "")


def x86_files() -> list[str]:
    return sorted(p.name for p in CPUINFO.iterdir() if p.name.startswith("linux-") and cpuinfo(p.name)[1] in X86)


ZEN4 = "linux-rocky8.5-zen4"
SPR = "linux-unknown-sapphirerapids"


def detect(flags, vendor, **kw):
    return target.detect(flags, vendor, "x86_64", **kw)


def test_native_is_the_detection():
    t = target.resolve("native", compiler_version="16.0.6", family=archspec.cpu.host().family.name)
    assert t.name == target.native().name or "ancestor" in " ".join(t.notes)
    assert t.requested == "native" and target.lookup("native").name == target.native().name


def test_detection_reports_archspecs_own_choice_for_this_host():
    from archspec.cpu import detect as asdetect

    info = asdetect.detected_info()
    d = target.detect(info.features, info.vendor, archspec.cpu.host().family.name)
    assert d.archspec == archspec.cpu.host().name


@pytest.mark.parametrize("name", x86_files())
def test_nothing_hidden_gives_archspecs_answer(name):
    """On real CPUs (flags as the kernel shows them) the choice is archspec's own."""
    d = detect(*cpuinfo(name))
    assert d.name == d.archspec == name.split("-", 2)[2]


def test_zen4_vm_without_pku_and_flush_l1d_is_zen4():
    flags, vendor = cpuinfo(ZEN4)
    d = detect(flags - {"pku", "flush_l1d"}, vendor)
    assert d.archspec == "x86_64_v4"  # archspec's host() on such a VM
    assert d.name == "zen4"
    assert d.ignored == ("flush_l1d", "pku")
    assert any("pku" in n and "flush_l1d" in n for n in d.notes())


def test_zen4_without_avx512f_is_no_v4_target():
    flags, vendor = cpuinfo(ZEN4)
    d = detect(flags - {"pku", "flush_l1d", "avx512f"}, vendor)
    assert not TARGETS["x86_64_v4"] <= TARGETS[d.name]
    assert d.name == "zen3"
    row = next(c for c in d.candidates if c.name == "zen4")
    assert row.missing == ("avx512f",) and row.verdict.startswith("no: lacks avx512f")


def test_a_generation_that_adds_only_ignored_flags_is_not_taken():
    """A Broadwell lacks only Skylake's CLFLUSHOPT/XSAVEC/XSAVES: it stays a broadwell."""
    flags, vendor = cpuinfo("linux-rhel7-broadwell")
    d = detect(flags, vendor)
    assert d.name == "broadwell" and not d.ignored
    assert "differs from broadwell only" in next(c.verdict for c in d.candidates if c.name == "skylake")


def test_features_clang_adds_beyond_archspec_are_required():
    """archspec's sapphirerapids lacks AVX512-FP16, which LLVM 16's -march=sapphirerapids uses."""
    flags, vendor = cpuinfo(SPR)
    assert detect(flags, vendor).name == "sapphirerapids"
    assert "avx512_fp16" not in TARGETS["sapphirerapids"].features
    d = detect(flags - {"avx512_fp16"}, vendor)
    assert d.name == "icelake"
    assert "avx512_fp16" in next(c.missing for c in d.candidates if c.name == "sapphirerapids")


@pytest.mark.parametrize("name", x86_files())
def test_never_a_target_whose_codegen_features_the_host_lacks(name):
    """Hide any one flag the choice needs: the new choice needs none that the host lacks."""
    flags, vendor = cpuinfo(name)
    first = detect(flags, vendor)
    for f in sorted(target.codegen_features(TARGETS[first.name]) & flags):
        d = detect(flags - {f}, vendor)
        assert d.name != first.name
        assert target.codegen_features(TARGETS[d.name]) <= flags - {f} | {"sse3"}, (f, d.name)


def test_other_vendors_are_not_considered():
    flags, vendor = cpuinfo(ZEN4)
    d = detect(flags, vendor)
    assert d.others == ("GenuineIntel",) and not any(c.name == "icelake" for c in d.candidates)


def test_ignored_flags_are_no_codegen_features():
    assert {"pku", "flush_l1d", "waitpkg"} <= target.NOT_CODEGEN.keys()
    for compute in ("avx512f", "aes", "sha_ni", "rdrand", "gfni", "avx512_vp2intersect", "sse4a", "fma4"):
        assert compute not in target.NOT_CODEGEN


# -- the compiler's view (a real clang) ------------------------------------------------------


def test_clang_check_on_a_zen4_vm(toolchain):
    flags, vendor = cpuinfo(ZEN4)
    d = detect(flags - {"pku", "flush_l1d"}, vendor, clang=(toolchain.clang, toolchain.version))
    assert d.name == "zen4" and d.compiler == f"clang {toolchain.version}"
    assert {"pku", "flush_l1d"} <= set(d.ignored)
    assert next(c for c in d.candidates if c.name == "zen4").compiler.endswith(": ok")


def test_clang_check_refuses_what_clang_turns_on_and_the_host_lacks(toolchain, monkeypatch):
    monkeypatch.setattr(target, "CLANG_EXTRA", {})  # archspec's features alone would say sapphirerapids
    flags, vendor = cpuinfo(SPR)
    flags -= {"avx512_fp16"}
    assert detect(flags, vendor).name == "sapphirerapids"
    d = detect(flags, vendor, clang=(toolchain.clang, toolchain.version))
    assert d.name == "icelake"
    assert "avx512_fp16" in next(c.compiler for c in d.candidates if c.name == "sapphirerapids")


def test_clang_extra_is_what_clang_16_turns_on(toolchain):
    """CLANG_EXTRA (detection without a clang) against the real clang 16."""
    if toolchain.major != 16:
        pytest.skip("the table is clang 16's")
    base = {"cx8", "fpu", "fxsr", "mmx", "sse", "sse2", "lm"}
    for t in TARGETS.values():
        if t.family.name != "x86_64":
            continue
        try:
            used, flags, _ = target.compiler_flags(t, toolchain.version)
        except BakeryError:
            continue
        if used is not t:
            continue
        extra = set()
        for f in target._clang_features(toolchain.clang, flags) or ():
            names = target._CPUINFO_OF_LLVM.get(f, (f,))
            if any(n in target.NOT_CODEGEN for n in names) or any(n in t.features or n in base for n in names):
                continue
            extra.add(names[0])
        extra.discard("prefetchwt1")  # mic_knl: implied by its avx512pf
        extra = {"pni" if f == "sse3" else f for f in extra}
        assert extra <= target.codegen_features(t), t.name


# -- flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,flag", [("x86_64", "-march=x86-64"), ("x86_64_v3", "-march=x86-64-v3"),
                                       ("zen3", "-march=znver3"), ("skylake_avx512", "-march=skylake-avx512"),
                                       ("sapphirerapids", "-march=sapphirerapids")])
def test_flags_from_archspec(name, flag):
    assert flag in target.resolve(name, compiler_version="16.0.6", family="x86_64").flags


@pytest.mark.parametrize("level", ["x86_64_v2", "x86_64_v3", "x86_64_v4"])
def test_levels_bake_with_plain_march(level):
    """What a user types: -march=x86-64-vN alone (-mtune=generic loses v4's 256-bit preference)."""
    t = target.resolve(level, compiler_version="16.0.6", family="x86_64")
    assert t.flags == (f"-march={level.replace('_', '-')}",)
    assert t.tune is None  # no tune-cpu: the level's own tuning, as from source


def test_baseline_and_models_keep_archspecs_tuning():
    assert target.resolve("x86_64", compiler_version="16.0.6", family="x86_64").tune == "generic"
    assert target.resolve("zen4", compiler_version="16.0.6", family="x86_64").tune == "znver4"


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


def test_native_resolves_with_the_detections_notes(monkeypatch):
    flags, vendor = cpuinfo(ZEN4)
    monkeypatch.setattr(target, "native", lambda: detect(flags - {"pku", "flush_l1d"}, vendor))
    t = target.resolve("native", compiler_version="16.0.6", family="x86_64")
    assert t.name == "zen4" and t.flags == ("-march=znver4", "-mtune=znver4")
    assert "x86_64_v4" in t.notes[0] and "flush_l1d, pku" in t.notes[1]


# -- bakery targets --why --------------------------------------------------------------------


@pytest.fixture
def zen4_vm(monkeypatch):
    flags, vendor = cpuinfo(ZEN4)
    monkeypatch.setattr(target, "native", lambda: detect(flags - {"pku", "flush_l1d"}, vendor))


def test_targets_why_native(zen4_vm, capsys):
    assert main(["targets", "--why", "native"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "native: zen4"
    assert "archspec's own detection: x86_64_v4" in out
    assert "not considered: the targets of GenuineIntel" in out
    rows = {line.split()[0]: line for line in lines if line.startswith("    ") and not line.strip().endswith(":")}
    assert "chosen; ignored: flush_l1d, pku" in rows["zen4"]
    assert "no: lacks avx512_vp2intersect" in rows["zen5"]
    assert "ok: the most specific generic level" in rows["x86_64_v4"]
    assert "ignored (not in /proc/cpuinfo here; code generation never uses them): flush_l1d, pku" in out
    assert "    pku: RDPKRU/WRPKRU" in out
    assert "  choice: zen4" in lines


def test_targets_why_other_names(zen4_vm, capsys):
    assert main(["targets", "--why", "zen5"]) == 0
    assert capsys.readouterr().out.startswith("zen5             no: lacks avx512_vp2intersect")
    assert main(["targets", "--why", "icelake"]) == 0
    assert "a target of GenuineIntel" in capsys.readouterr().out
    assert main(["targets", "--why", "native", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["native"] == "zen4" and data["archspec"] == "x86_64_v4" and data["ignored"] == ["flush_l1d", "pku"]
