"""The NFD name table and the compatibility spec it writes (bakery/compat.py), with no registry.
(tests/images/test_compat.py checks the artifact on real node tags.)"""

from __future__ import annotations

import archspec.cpu
import pytest
import yaml
from helpers import NFD_LABELS_V2, NFD_LABELS_V3, validate_nfd_compat

from bakery import compat
from bakery import target as targetmod
from bakery.errors import PlanRefused

X86 = sorted(t.name for t in archspec.cpu.TARGETS.values() if t.family.name == "x86_64")
ARM = sorted(t.name for t in archspec.cpu.TARGETS.values() if t.family.name == "aarch64")


def test_the_table_maps_each_linux_name_to_one_nfd_name():
    linux = list(compat.NFD_X86.values())
    assert len(linux) == len(set(linux)), "two NFD flags for one Linux flag"
    assert compat.nfd_name("avx2", "x86_64") == "AVX2"
    assert compat.nfd_name("fma", "x86_64") == "FMA3"
    assert compat.nfd_name("abm", "x86_64") == "LZCNT"
    assert compat.nfd_name("pclmulqdq", "x86_64") == "CLMUL"
    assert compat.nfd_name("sse4_1", "x86_64") == "SSE4" and compat.nfd_name("sse4_2", "x86_64") == "SSE42"
    assert compat.nfd_name("pni", "x86_64") == compat.nfd_name("sse3", "x86_64") == "SSE3"  # /proc/cpuinfo's name
    assert compat.nfd_name("avx512_vnni", "x86_64") == "AVX512VNNI"
    assert compat.nfd_name("fpu", "x86_64") == "X87" and compat.nfd_name("cx8", "x86_64") == "CMPXCHG8"
    assert compat.nfd_name("clwb", "x86_64") is None  # klauspost/cpuid has no such flag
    assert compat.nfd_name("sve", "aarch64") == "SVE" and compat.nfd_name("asimdfhm", "aarch64") == "ASIMDFHM"
    assert compat.nfd_name("f8cvt", "aarch64") is None  # no hwcap NFD reports


def test_kubernetes_mapping_reads_the_same_table():
    from bakery.scale import k8s

    assert k8s.NFD_X86 is compat.NFD_X86 and k8s.NFD_DEFAULT_DENYLIST is compat.NFD_DEFAULT_DENYLIST


def test_x86_64_v3_rules_are_the_levels_with_nfds_names():
    req = compat.requirements("x86_64_v3")
    assert [(r.name, r.features) for r in req.rules] == [
        ("x86_64 baseline", ("CMOV", "CMPXCHG8", "FXSR", "MMX", "SSE", "SSE2", "X87")),
        ("x86_64_v2", ("CX16", "LAHF", "POPCNT", "SSE3", "SSE4", "SSE42", "SSSE3")),
        ("x86_64_v3", ("AVX", "AVX2", "BMI1", "BMI2", "F16C", "FMA3", "LZCNT", "MOVBE")),
    ]
    assert req.ignored == {"xsave": targetmod.NOT_CODEGEN["xsave"]} and req.unchecked == ()


def test_an_exact_model_adds_its_own_rule_and_leaves_out_what_no_compiler_emits():
    req = compat.requirements("zen4")
    names = [r.name for r in req.rules]
    assert names == ["x86_64 baseline", "x86_64_v2", "x86_64_v3", "x86_64_v4", "zen4"]
    v4, zen4 = req.rules[3].features, req.rules[4].features
    assert set(v4) == {"AVX512F", "AVX512BW", "AVX512CD", "AVX512DQ", "AVX512VL"}
    assert {"AVX512VNNI", "AVX512BF16", "VAES", "GFNI", "SHA", "SSE4A"} <= set(zen4)
    assert not {"FLUSH_L1D", "XSAVE", "XSAVEC", "XSAVEOPT", "CLZERO"} & req.features
    assert {"flush_l1d", "pku", "clwb", "clflushopt"} <= req.ignored.keys()
    assert req.unchecked == ("3dnowprefetch",)  # clang's -march=znver4 turns on PREFETCHW: NFD has no flag


@pytest.mark.parametrize("name", X86 + ARM)
def test_every_target_needs_what_code_generation_uses_under_a_name_nfd_knows(name):
    t = archspec.cpu.TARGETS[name]
    family = t.family.name
    req = compat.requirements(name)
    rules = [set(r.features) for r in req.rules]
    assert all(rules) and sum(map(len, rules)) == len(set().union(*rules)), "a rule repeats a feature or is empty"
    assert req.features <= compat.known_flags(family)
    needs = (targetmod.codegen_features(t) - compat.not_codegen(family).keys()) | set(compat.BASELINE[family])
    assert req.features == compat.nfd_names(needs, family)
    assert set(req.unchecked) == {f for f in needs if compat.nfd_name(f, family) is None}
    assert req.rules[0].name == f"{family} baseline"
    validate_nfd_compat(compat.document(req))


@pytest.mark.parametrize("name", ["x86_64", "x86_64_v2", "x86_64_v4", "zen4", "sapphirerapids", "neoverse_v1"])
def test_the_yaml_is_the_document_and_valid_against_nfds_schema(name):
    req = compat.requirements(targetmod.Target(name, name, archspec.cpu.TARGETS[name].family.name, ("-march=x",)))
    text = compat.render(req)
    doc = yaml.safe_load(text)
    assert doc == compat.document(req)
    validate_nfd_compat(doc)
    assert compat.parse(text) == doc
    assert "-march=x" in doc["compatibilities"][0]["description"]
    assert text.startswith("# Image compatibility of a bakery node tag") and "nfd compat validate-node" in text


def test_parse_refuses_what_is_not_the_format():
    for bad, why in [(b"version: v1alpha2\ncompatibilities: []\n", "version"),
                     (b"[1, 2]\n", "not a mapping"),
                     (b"version: v1alpha1\ncompatibilities:\n- rules:\n  - matchFeatures: []\n", "no name"),
                     (b"version: v1alpha1\ncompatibilities:\n- rules:\n  - name: x\n    matchFeatures:\n"
                      b"    - feature: cpu.cpuid\n      matchExpressions: {AVX2: {op: Has}}\n", "op"),
                     (b"a: &x [1]\nb: *x\n", "aliases"),
                     (b"{ unclosed\n", "not YAML")]:
        with pytest.raises(PlanRefused) as e:
            compat.parse(bad)
        assert why in e.value.message and "\n" not in e.value.message


def _host(flags: set[str]) -> compat.Node:
    return compat.Node("h", "/proc/cpuinfo", "x86_64", frozenset(flags),
                       tellable=frozenset(compat.NFD_X86) | compat.NFD_AARCH64)


def test_evaluate_names_the_missing_features_per_rule():
    spec = compat.document(compat.requirements("x86_64_v3"))
    v2 = compat.nfd_names(set(archspec.cpu.TARGETS["x86_64_v2"].features) | set(compat.BASELINE["x86_64"]), "x86_64")
    res = compat.evaluate(spec, _host(v2))
    assert [(r.name, r.ok) for r in res] == [("x86_64 baseline", True), ("x86_64_v2", True), ("x86_64_v3", False)]
    assert res[2].missing == ["AVX", "AVX2", "BMI1", "BMI2", "F16C", "FMA3", "LZCNT", "MOVBE"]
    assert res[2].line() == "x86_64_v3: missing AVX, AVX2, BMI1, BMI2, F16C, FMA3, LZCNT, MOVBE"
    assert all(r.ok for r in compat.evaluate(spec, _host(v2 | set(res[2].missing))))


def test_an_x86_artifact_fails_on_an_arm_host():
    spec = compat.document(compat.requirements("x86_64_v2"))
    arm = compat.Node("a", "/proc/cpuinfo", "aarch64", frozenset({"FP", "ASIMD", "AES"}),
                      tellable=frozenset(compat.NFD_X86) | compat.NFD_AARCH64)
    assert not any(r.ok for r in compat.evaluate(spec, arm))


def test_labels_of_nfds_default_configuration_cannot_tell_the_hidden_flags():
    spec = compat.document(compat.requirements("x86_64_v3"))
    v2 = compat.labels_node("n2", NFD_LABELS_V2, "labels")
    assert v2.hidden == compat.NFD_DEFAULT_DENYLIST and v2.model["vendor_id"] == "Intel"
    res = compat.evaluate(spec, v2)
    assert [r.ok for r in res] == [True, True, False]
    assert res[2].missing == ["AVX", "AVX2", "FMA3", "MOVBE"]
    assert set(res[2].untold) == {"BMI1", "BMI2", "F16C", "LZCNT"}
    assert "attributeBlacklist" in res[2].line()
    assert all(r.ok for r in compat.evaluate(spec, compat.labels_node("n3", NFD_LABELS_V3, "labels")))
    # An NFD told to label every flag is read strictly: a missing BMI2 is missing.
    strict = {**NFD_LABELS_V3, **{f"{compat.CPUID}{f}": "true" for f in ("BMI1", "F16C", "LZCNT", "SSE2")}}
    res = compat.evaluate(spec, compat.labels_node("n", strict, "labels"))
    assert res[2].missing == ["BMI2"] and not res[2].untold


def test_cpu_model_terms_and_unsupported_terms():
    spec = {"version": "v1alpha1", "compatibilities": [{"rules": [
        {"name": "vendor", "matchFeatures": [{"feature": "cpu.model",
                                              "matchExpressions": {"vendor_id": {"op": "In", "value": ["AMD"]}}}]},
        {"name": "module", "matchFeatures": [{"feature": "kernel.loadedmodule",
                                              "matchExpressions": {"vfio-pci": {"op": "Exists"}}}]},
        {"name": "either", "matchAny": [{"matchFeatures": [{"feature": "cpu.cpuid",
                                                            "matchExpressions": {"AVX512F": {"op": "Exists"}}}]},
                                        {"matchFeatures": [{"feature": "cpu.cpuid",
                                                            "matchExpressions": {"AVX2": {"op": "Exists"}}}]}]}]}]}
    validate_nfd_compat(spec)
    vendor, module, either = compat.evaluate(spec, compat.labels_node("n3", NFD_LABELS_V3, "labels"))
    assert not vendor.ok and "vendor_id" in vendor.missing[0] and "Intel" in vendor.missing[0]
    assert not module.ok and module.unsupported and "not checked here" in module.line()
    assert either.ok


def test_labels_without_nfds_cpuid_labels_are_bad_input():
    with pytest.raises(compat.BadInput) as e:
        compat.labels_node("n", {"kubernetes.io/arch": "amd64"}, "labels x.json")
    assert e.value.exit_code == 2 and "cpu-cpuid" in e.value.message and "\n" not in e.value.message
