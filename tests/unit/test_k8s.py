"""Kubernetes: rendered manifests validate against the Kubernetes OpenAPI schemas (shipped offline
by kubernetes-validate, strict: no unknown fields), and NFD labels map to the right archspec target."""

import json

import archspec.cpu
import pytest
import yaml
from helpers import K8S_VERSION, validate_k8s

from bakery.cli import main
from bakery.errors import BakeryError
from bakery.scale import k8s

kv = pytest.importorskip("kubernetes_validate")
REF = "registry.example.com/hpc/pi:1.0"

N = "feature.node.kubernetes.io/"


validate = validate_k8s


def nfd(*flags: str, vendor: str | None = None, family: int | None = None, model: int | None = None,
        arch: str = "amd64") -> dict:
    """A node's labels as nfd-worker (default configuration) writes them, plus the usual kubelet ones."""
    labels = {"kubernetes.io/arch": arch, "kubernetes.io/os": "linux", "kubernetes.io/hostname": "node-1",
              N + "cpu-hardware_multithreading": "true", N + "kernel-version.major": "6"}
    labels.update({N + "cpu-cpuid." + f: "true" for f in flags})
    if vendor:
        labels[N + "cpu-model.vendor_id"] = vendor
    if family is not None:
        labels[N + "cpu-model.family"] = str(family)
    if model is not None:
        labels[N + "cpu-model.id"] = str(model)
    return labels


# Label sets as NFD reports them with its default attributeBlacklist (no SSE4.2, POPCNT, BMI2, F16C...).
ICELAKE_SERVER = nfd("ADX", "AESNI", "AVX", "AVX2", "AVX512BITALG", "AVX512BW", "AVX512CD", "AVX512DQ", "AVX512F",
                     "AVX512IFMA", "AVX512VBMI", "AVX512VBMI2", "AVX512VL", "AVX512VNNI", "AVX512VPOPCNTDQ",
                     "CMPXCHG8", "FLUSH_L1D", "FMA3", "FSRM", "FXSR", "FXSROPT", "GFNI", "HYPERVISOR", "IA32_ARCH_CAP",
                     "IBPB", "LAHF", "MD_CLEAR", "MOVBE", "OSXSAVE", "SHA", "SPEC_CTRL_SSBD", "STIBP", "SYSCALL",
                     "SYSEE", "VAES", "VPCLMULQDQ", "WBNOINVD", "X87", "XGETBV1", "XSAVE", "XSAVEC", "XSAVEOPT",
                     "XSAVES", vendor="Intel", family=6, model=106)
ZEN3 = nfd("ADX", "AESNI", "AVX", "AVX2", "CLZERO", "CMPXCHG8", "CPBOOST", "FMA3", "FP256", "FSRM", "FXSR", "FXSROPT",
           "HYPERVISOR", "IBPB", "LAHF", "MOVBE", "MOVU", "OSXSAVE", "SHA", "SSE4A", "STIBP", "SUCCOR", "SYSCALL",
           "SYSEE", "VAES", "VPCLMULQDQ", "WBNOINVD", "X87", "XGETBV1", "XSAVE", "XSAVEC", "XSAVEOPT", "XSAVES",
           vendor="AMD", family=25, model=1)
ZEN2 = nfd("ADX", "AESNI", "AVX", "AVX2", "CLZERO", "CMPXCHG8", "CPBOOST", "FMA3", "FXSR", "FXSROPT", "IBPB", "LAHF",
           "MOVBE", "OSXSAVE", "SHA", "SSE4A", "STIBP", "SUCCOR", "SYSCALL", "SYSEE", "WBNOINVD", "X87", "XGETBV1",
           "XSAVE", "XSAVEC", "XSAVEOPT", "XSAVES", vendor="AMD", family=23, model=49)
HASWELL = nfd("AESNI", "AVX", "AVX2", "CMPXCHG8", "FMA3", "FXSR", "FXSROPT", "HLE", "IBPB", "LAHF", "MD_CLEAR",
              "MOVBE", "OSXSAVE", "RTM", "SPEC_CTRL_SSBD", "STIBP", "SYSCALL", "SYSEE", "VMX", "X87", "XSAVE",
              "XSAVEOPT", vendor="Intel", family=6, model=63)
SANDYBRIDGE = nfd("AESNI", "AVX", "CMPXCHG8", "FXSR", "LAHF", "OSXSAVE", "SYSCALL", "SYSEE", "VMX", "X87", "XSAVE",
                  "XSAVEOPT", vendor="Intel", family=6, model=45)
SKYLAKE_SP = nfd("ADX", "AESNI", "AVX", "AVX2", "AVX512BW", "AVX512CD", "AVX512DQ", "AVX512F", "AVX512VL", "CMPXCHG8",
                 "FMA3", "FXSR", "FXSROPT", "HLE", "IBPB", "LAHF", "MOVBE", "MPX", "OSXSAVE", "RTM", "SYSCALL",
                 "SYSEE", "X87", "XSAVE", "XSAVEC", "XSAVEOPT", "XSAVES", vendor="Intel", family=6, model=85)
# arm64: NFD labels the kernel's hwcaps; Graviton2 (Neoverse N1, part 0xd0c) and Graviton3 (Neoverse V1, 0xd40).
GRAVITON2 = nfd("FP", "ASIMD", "EVTSTRM", "AES", "PMULL", "SHA1", "SHA2", "CRC32", "ATOMICS", "FPHP", "ASIMDHP",
                "CPUID", "ASIMDRDM", "LRCPC", "DCPOP", "ASIMDDP", "SSBS", vendor="ARM", family=8, model=0xd0c,
                arch="arm64")
GRAVITON3 = nfd("FP", "ASIMD", "EVTSTRM", "AES", "PMULL", "SHA1", "SHA2", "CRC32", "ATOMICS", "FPHP", "ASIMDHP",
                "CPUID", "ASIMDRDM", "JSCVT", "FCMA", "LRCPC", "DCPOP", "SHA3", "SM3", "SM4", "ASIMDDP", "SHA512",
                "SVE", "ASIMDFHM", "DIT", "USCAT", "ILRCPC", "FLAGM", "SSBS", "PACA", "PACG", "DCPODP", "SVEI8MM",
                "SVEBF16", "I8MM", "BF16", "DGH", "RNG", vendor="ARM", family=8, model=0xd40, arch="arm64")


# -- NFD labels -> archspec ---------------------------------------------------------------------

@pytest.mark.parametrize("labels, expected", [
    (ICELAKE_SERVER, "icelake"),
    (ZEN3, "zen3"),
    (HASWELL, "haswell"),
    (GRAVITON2, "neoverse_n1"),
    (GRAVITON3, "neoverse_v1"),
], ids=["icelake-server", "zen3", "haswell", "graviton2", "graviton3"])
def test_nfd_labels_map_to_the_most_specific_archspec_target(labels, expected):
    m = k8s.match(labels)
    assert m.target == expected, m.to_json()
    # Whatever was inferred, the answer never needs a feature the node's labels deny:
    # every feature NFD reports by default that the target has is on the node.
    t = archspec.cpu.TARGETS[m.target]
    for e in k8s.requirement(m.target).expressions:
        assert labels.get(e["key"]) in e["values"], (e, t.name)


def test_hidden_flags_come_with_the_target_the_reported_ones_tell():
    m = k8s.match(HASWELL)
    assert m.node.default_denylist
    # AVX2+FMA+MOVBE tell a haswell from an ivybridge; a haswell has BMI2, F16C, POPCNT... in archspec.
    assert {"bmi2", "f16c", "popcnt", "sse4_2", "rdrand", "pclmulqdq"} <= m.inferred
    assert "avx512f" not in m.features and m.missing["broadwell"] == ["adx"]


def test_sandy_bridge_is_not_guessed_up_to_ivy_bridge():
    # F16C and RDRAND (Ivy Bridge's only additions) are hidden by NFD's defaults and implied by no
    # flag a Sandy Bridge reports: the answer stays at sandybridge, which is safe on both.
    m = k8s.match(SANDYBRIDGE)
    assert m.target == "sandybridge"
    assert "ivybridge" in m.missing and set(m.missing["ivybridge"]) == {"f16c", "rdrand"}


def test_a_target_that_adds_only_unreported_features_is_not_guessed():
    # NFD has no CLWB flag: a Zen 2 (zen + CLWB) cannot be told from a Zen, so it maps to zen...
    assert k8s.match(ZEN2).target == "zen"
    assert k8s.match(ZEN2).missing["zen2"] == ["clwb"]
    # ...but Skylake-SP is told from Skylake by its AVX-512 flags, and gets the CLWB that came with it.
    m = k8s.match(SKYLAKE_SP)
    assert m.target == "skylake_avx512" and "clwb" in m.inferred


def test_an_nfd_configured_to_report_everything_is_read_strictly():
    full = dict(ICELAKE_SERVER)
    full.update({N + "cpu-cpuid." + f: "true" for f in ("SSE", "SSE2", "SSE3", "SSSE3", "SSE4", "SSE42", "POPCNT",
                                                         "CX16", "LZCNT", "BMI1", "BMI2", "F16C", "CLMUL", "RDRAND",
                                                         "RDSEED", "MMX", "CMOV")})
    m = k8s.match(full)
    assert not m.node.default_denylist and m.target == "icelake"
    # Shown, F16C's absence is real: no ivybridge, no x86_64_v3 and nothing above without it.
    del full[N + "cpu-cpuid.F16C"]
    assert k8s.match(full).target == "sandybridge"


def test_without_a_vendor_label_only_generic_levels_are_possible():
    labels = {k: v for k, v in ICELAKE_SERVER.items() if not k.endswith("vendor_id")}
    assert k8s.match(labels).target == "x86_64_v4"
    assert k8s.match({k: v for k, v in GRAVITON3.items() if not k.endswith("vendor_id")}).target == "aarch64"


def test_arm_cpu_part_picks_among_equally_capable_targets():
    # The model label (MIDR part number) is used like archspec's host(): when a candidate has it.
    assert k8s.node_cpu(GRAVITON2).cpu_part == "0xd0c"
    assert k8s.node_cpu(GRAVITON3).cpu_part == "0xd40"


def test_family_comes_from_the_flags_when_the_arch_label_is_missing():
    labels = {k: v for k, v in GRAVITON2.items() if k != "kubernetes.io/arch"}
    assert k8s.match(labels).target == "neoverse_n1"
    with pytest.raises(BakeryError, match="architecture"):
        k8s.match({"kubernetes.io/hostname": "x"})


@pytest.mark.parametrize("target", ["icelake", "zen3", "haswell", "x86_64_v3", "neoverse_v1", "neoverse_n1"])
def test_a_node_with_just_the_required_labels_maps_back_to_the_target(target):
    assert k8s.match(k8s.labels_for(target)).target == target


def test_requirement_names_vendor_arch_and_reported_features():
    req = k8s.requirement("zen3")
    keys = {e["key"]: e["values"] for e in req.expressions}
    assert keys["kubernetes.io/arch"] == ["amd64"] and keys[N + "cpu-model.vendor_id"] == ["AMD"]
    assert keys[N + "cpu-cpuid.VAES"] == ["true"] and keys[N + "cpu-cpuid.AVX2"] == ["true"]
    assert N + "cpu-cpuid.BMI2" not in keys  # hidden by NFD's default: requiring it would match no node
    assert "bmi2" in req.unchecked and "pku" in req.unchecked
    generic = {e["key"] for e in k8s.requirement("x86_64_v4").expressions}
    assert N + "cpu-model.vendor_id" not in generic and N + "cpu-cpuid.AVX512F" in generic
    with pytest.raises(BakeryError, match="unknown target"):
        k8s.requirement("zen33")


def test_node_lists_from_kubectl(tmp_path, capsys):
    nodes = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a", "labels": ICELAKE_SERVER}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "b", "labels": GRAVITON3}}]}
    p = tmp_path / "nodes.json"
    p.write_text(json.dumps(nodes))
    assert main(["k8s", "target", "--labels", str(p)]) == 0
    assert capsys.readouterr().out.splitlines() == ["a\ticelake", "b\tneoverse_v1"]
    one = tmp_path / "labels.yaml"
    one.write_text(yaml.safe_dump(ZEN3))
    assert main(["k8s", "target", "--labels", str(one)]) == 0
    assert capsys.readouterr().out == "zen3\n"
    assert main(["k8s", "target", "--labels", str(one), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["target"] == "zen3" and "pku" in info["inferred"] and info["vendor"] == "AuthenticAMD"


# -- manifests ------------------------------------------------------------------------------------

def test_auto_job_runs_the_ir_image_with_a_cache_volume_and_no_init_container():
    (job,) = validate(k8s.render_job(REF, cpu="2", memory="2Gi"))
    assert job["kind"] == "Job"
    spec = job["spec"]["template"]["spec"]
    assert "initContainers" not in spec and "affinity" not in spec  # any node: the launcher finishes it there
    (app,) = spec["containers"]
    assert app["image"] == REF and "command" not in app and "env" not in app  # the image's entrypoint
    assert app["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert app["volumeMounts"] == [{"name": "bakery-cache", "mountPath": "/var/cache/bakery"}]
    assert spec["volumes"] == [{"name": "bakery-cache", "emptyDir": {}}]
    (node,) = validate(k8s.render_job(REF, cache_host_path="/var/cache/bakery", serve="http://bakery.hpc.svc:5001",
                                      push=True))
    spec = node["spec"]["template"]["spec"]
    assert spec["volumes"] == [{"name": "bakery-cache",
                                "hostPath": {"path": "/var/cache/bakery", "type": "DirectoryOrCreate"}}]
    assert spec["containers"][0]["env"] == [{"name": "BAKERY_REGISTRY", "value": "http://bakery.hpc.svc:5001"},
                                            {"name": "BAKERY_PUSH", "value": "1"}]
    with pytest.raises(BakeryError, match="for --target auto"):
        k8s.render_job(REF, target="zen3", serve="http://bakery:5001")


def test_target_job_pulls_the_node_tag_on_nodes_with_the_targets_features():
    (job,) = validate(k8s.render_job(REF, target="zen3", command=["pi"], args=["1000000"], namespace="hpc"))
    spec = job["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert spec["containers"][0]["image"] == "registry.example.com/hpc/pi:1.0-zen3"
    assert spec["containers"][0]["command"] == ["pi"] and spec["containers"][0]["args"] == ["1000000"]
    term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == k8s.requirement("zen3").expressions
    # The labels of a Zen 3 node satisfy it; an Ice Lake's do not.
    for labels, ok in ((ZEN3, True), (ICELAKE_SERVER, False), (HASWELL, False)):
        assert all(labels.get(e["key"]) in e["values"] for e in term["matchExpressions"]) is ok
    (slim,) = validate(k8s.render_job(REF, target="neoverse_v1", slim=True))
    assert slim["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.0-neoverse_v1-slim")


def test_serve_manifests_validate():
    docs = validate(k8s.render_serve("registry.example.com/bakery:0.1", policy="rules:\n  - repositories: ['*']\n",
                                     storage_claim="registry-data", service_type="NodePort"))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ConfigMap", "Deployment", "Service"]
    pod = docs[1]["spec"]["template"]["spec"]
    registry, serve = pod["containers"]
    assert registry["image"] == "registry:2" and serve["command"][:4] == ["bakery", "serve", "--upstream",
                                                                          "http://127.0.0.1:5000"]
    assert serve["command"][serve["command"].index("--listen") + 1] == "0.0.0.0:5001"
    assert yaml.safe_load(docs[0]["data"]["policy.yaml"]) == {"rules": [{"repositories": ["*"]}]}
    # Nothing unauthenticated is exposed, and nothing is privileged (docs/security.md).
    assert {p["port"] for p in docs[2]["spec"]["ports"]} == {5001}
    env = {e["name"]: e["value"] for e in registry["env"]}
    assert env["REGISTRY_HTTP_ADDR"] == "127.0.0.1:5000" and env["REGISTRY_AUTH"] == "htpasswd"
    assert serve["command"][serve["command"].index("--engine") + 1] == "none"
    for c in (registry, serve):
        sc = c["securityContext"]
        assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
    assert serve["securityContext"]["runAsNonRoot"] and serve["securityContext"]["readOnlyRootFilesystem"]
    # Without --policy: bakery/data/registry/lazy-policy.yaml, not "everything".
    default = validate(k8s.render_serve("registry.example.com/bakery:0.1"))
    rules = yaml.safe_load(default[0]["data"]["policy.yaml"])["rules"]
    assert rules and all("*" not in r["repositories"] and "*" not in r["targets"] for r in rules)
    # A registry elsewhere: serve alone.
    docs = validate(k8s.render_serve("registry.example.com/bakery:0.1", upstream="https://registry.example.com",
                                     registry_image="registry.example.com/distribution:2.8"))
    (serve,) = docs[1]["spec"]["template"]["spec"]["containers"]
    assert "https://registry.example.com" in serve["command"]


def test_selector_fragment_fits_a_pod_spec():
    frag = yaml.safe_load(k8s.render_affinity("icelake"))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "app", "image": REF + "-icelake"}], **frag}}
    kv.validate(pod, K8S_VERSION, strict=True)


def test_a_wrong_field_is_caught_by_the_schema():
    (job,) = k8s.documents(k8s.render_job(REF))
    job["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    with pytest.raises(kv.ValidationError):
        kv.validate(job, K8S_VERSION, strict=True)


def test_cli_renders_valid_yaml(capsys, monkeypatch):
    assert main(["k8s", "job", REF, "--target", "icelake", "--name", "pi-icelake"]) == 0
    (job,) = validate(capsys.readouterr().out)
    assert job["metadata"]["name"] == "pi-icelake"
    monkeypatch.setenv("BAKERY_REGISTRY", "registry.example.com")
    assert main(["k8s", "job", "pi:1.0", "--command", "pi 100", "--image-pull-policy", "Always"]) == 0
    (job,) = validate(capsys.readouterr().out)
    app = job["spec"]["template"]["spec"]["containers"][0]
    assert app["image"] == "registry.example.com/pi:1.0" and app["command"] == ["pi", "100"]
    assert main(["k8s", "serve", "--image", "registry.example.com/bakery:0.1"]) == 0
    validate(capsys.readouterr().out)
    assert main(["k8s", "job", REF, "--target", "zen33"]) == 1
    assert "zen33" in capsys.readouterr().err
    assert main(["k8s", "job", REF + "@sha256:" + "a" * 64, "--target", "zen3"]) == 1
