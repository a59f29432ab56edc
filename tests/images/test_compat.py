"""Node tags carry an image compatibility artifact in node-feature-discovery's format (v1alpha1), found
as a referrer of the node tag's manifest through the referrers tag schema, and `bakery check` reads
it: a real registry, two real bakes of examples/pi (x86_64_v3 with buildah, x86_64_v2 through the
registry API alone). The name table and the evaluation are in tests/unit/test_compat_names.py."""

from __future__ import annotations

import io
import json
import subprocess

import pytest
import yaml
from helpers import NFD_LABELS_V2, NFD_LABELS_V3, fresh, node_json, validate_nfd_compat

from bakery import compat, oci
from bakery import images as imagemod
from bakery.cli import main


@pytest.fixture(scope="module")
def bakes(images, engine, registry):
    images.ir("pi")
    v3 = imagemod.bake(f"{registry}/pi:1.0", engine, registry, "x86_64_v3")  # buildah commit straight to the registry
    fresh(registry, "pi", "1.0-x86_64_v2")  # another module may have baked it with buildah: bake it here without
    v2 = imagemod.bake(f"{registry}/pi:1.0", None, registry, "x86_64_v2")    # --engine none: the registry API alone
    assert not v2.reused
    return {"x86_64_v3": v3, "x86_64_v2": v2}


def _raw(ref: str) -> dict:
    """What skopeo, another client, reads from the registry."""
    cp = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                        capture_output=True, text=True, check=True)
    return json.loads(cp.stdout)


@pytest.mark.parametrize("target", ["x86_64_v3", "x86_64_v2"])
def test_node_tag_has_the_compatibility_artifact_as_a_referrer(bakes, registry, target):
    node = bakes[target]
    reg = oci.Registry(registry)
    manifest_bytes, media_type, _ = reg.get_manifest("pi", node.digest)
    # The referrers tag schema, as oras and NFD's client (oras-go) read it on a registry without the API.
    index = _raw(f"{registry}/pi:{node.digest.replace(':', '-')}")
    assert index["mediaType"] == oci.INDEX
    found = [m for m in index["manifests"] if m.get("artifactType") == compat.ARTIFACT_TYPE]
    assert len(found) == 1 and found[0]["artifactType"] == "application/vnd.nfd.image-compatibility.v1alpha1"
    assert found[0]["annotations"]["org.opencontainers.image.created"]  # validate-node takes the newest by it
    assert reg.referrers("pi", node.digest, compat.ARTIFACT_TYPE) == found

    art = _raw(f"{registry}/pi@{found[0]['digest']}")
    assert art["mediaType"] == oci.MANIFEST and art["artifactType"] == compat.ARTIFACT_TYPE
    assert art["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                             "digest": oci.sha256(b"{}")}
    assert art["subject"] == {"mediaType": media_type, "digest": node.digest, "size": len(manifest_bytes)}
    assert [layer["mediaType"] for layer in art["layers"]] == ["application/vnd.nfd.image-compatibility.spec.v1alpha1+yaml"]
    ann = art["annotations"]
    assert ann["dev.bakery.target"] == target and ann["dev.bakery.target.flags"] == f"-march={target.replace('_', '-')}"
    assert "node-feature-discovery" in ann["org.opencontainers.image.description"]

    text = reg.get_blob("pi", art["layers"][0]["digest"]).decode()
    spec = yaml.safe_load(text)
    validate_nfd_compat(spec)  # the format as NFD documents it
    rules = {r["name"]: r for r in spec["compatibilities"][0]["rules"]}
    cpuid = {n: set(r["matchFeatures"][0]["matchExpressions"]) for n, r in rules.items()}
    assert all(r["matchFeatures"][0]["feature"] == "cpu.cpuid" for r in rules.values())
    assert {"SSE2", "X87"} <= cpuid["x86_64 baseline"] and {"SSE42", "POPCNT"} <= cpuid["x86_64_v2"]
    if target == "x86_64_v3":
        assert cpuid["x86_64_v3"] == {"AVX", "AVX2", "BMI1", "BMI2", "F16C", "FMA3", "LZCNT", "MOVBE"}
    else:
        assert "x86_64_v3" not in rules
    assert all(e == {"op": "Exists"} for r in rules.values() for e in r["matchFeatures"][0]["matchExpressions"].values())
    assert "-march=" in spec["compatibilities"][0]["description"]
    assert compat.fetch(reg, "pi", node.digest).spec == spec


def test_check_passes_on_this_host(bakes, capsys):
    flags = open("/proc/cpuinfo").read()
    if " avx2 " not in flags or " fma " not in flags:
        pytest.skip("this host is no x86_64_v3 CPU")
    ref = bakes["x86_64_v3"].ref.split("@")[0]
    assert main(["check", ref]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:4] == ["  x86_64 baseline: ok", "  x86_64_v2: ok", "  x86_64_v3: ok"]
    assert out[-1] == f"compatible: this host can run {ref}"
    assert main(["check", ref, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["compatible"] and doc["checks"][0]["target"] == "x86_64_v3"
    assert [r["name"] for r in doc["checks"][0]["rules"] if r["ok"]] == ["x86_64 baseline", "x86_64_v2", "x86_64_v3"]


def test_check_refuses_a_v2_node_for_the_v3_tag_naming_what_it_lacks(bakes, tmp_path, capsys):
    v3, v2 = (bakes[t].ref.split("@")[0] for t in ("x86_64_v3", "x86_64_v2"))
    node = tmp_path / "node.json"
    node.write_text(json.dumps(node_json("westmere-1", NFD_LABELS_V2)))  # kubectl get node westmere-1 -o json
    assert main(["check", v3, "--node-labels", str(node)]) == 1
    out = capsys.readouterr().out
    assert ("  x86_64_v3: missing AVX, AVX2, FMA3, MOVBE (unverifiable: BMI1, BMI2, F16C, LZCNT: "
            "NFD does not label them by default") in out
    assert out.splitlines()[-1] == "not compatible: node westmere-1 lacks AVX, AVX2, FMA3, MOVBE"
    assert main(["check", v2, "--node-labels", str(node)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"compatible: node westmere-1 can run {v2}"

    nodes = tmp_path / "nodes.json"  # kubectl get nodes -o json: one node can, one cannot
    nodes.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        node_json("haswell-1", NFD_LABELS_V3), node_json("westmere-1", NFD_LABELS_V2)]}))
    assert main(["check", v3, "--node-labels", str(nodes), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [(c["node"], c["compatible"]) for c in doc["checks"]] == [("haswell-1", True), ("westmere-1", False)]
    assert doc["checks"][1]["rules"][2]["missing"] == ["AVX", "AVX2", "FMA3", "MOVBE"]


def test_check_reads_a_plain_label_map_from_stdin(bakes, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(NFD_LABELS_V3)))
    assert main(["check", bakes["x86_64_v3"].ref.split("@")[0], "--node-labels", "-"]) == 0
    assert "compatible: node node can run" in capsys.readouterr().out


def test_check_of_a_published_index_checks_each_bake(bakes, registry, tmp_path, capsys):
    """An index as bakery publish writes it (here by hand, so pi:1.0 stays the IR image for the others)."""
    reg = oci.Registry(registry)
    entries = []
    for target, variant in (("x86_64_v2", "v2"), ("x86_64_v3", "v3")):
        data, media_type, digest = reg.get_manifest("pi", bakes[target].digest)
        entries.append({"mediaType": media_type, "digest": digest, "size": len(data),
                        "platform": {"architecture": "amd64", "os": "linux", "variant": variant},
                        "annotations": {"dev.bakery.role": "bake", "dev.bakery.target": target}})
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": entries}).encode()
    reg.put_manifest("pi", "compat-index", index, oci.INDEX)
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump(node_json("westmere-1", NFD_LABELS_V2)))
    assert main(["check", f"{registry}/pi:compat-index", "--node-labels", str(node)]) == 0
    out = capsys.readouterr().out
    assert "v3 x86_64_v3 on node westmere-1:" in out and "  x86_64_v3: missing AVX, AVX2, FMA3, MOVBE" in out
    assert out.splitlines()[-1] == "node westmere-1 can run: v2 (x86_64_v2)"


@pytest.mark.parametrize("content, says", [
    (None, "No such file"),
    ("{ not: [closed", "not JSON or YAML (line"),
    ("[1, 2, 3]", "expected a label map"),
    ('{"kubernetes.io/arch": "amd64"}', "no feature.node.kubernetes.io/cpu-cpuid.* label"),
])
def test_a_bad_labels_file_is_one_line(bakes, tmp_path, capsys, content, says):
    path = tmp_path / "labels.json"
    if content is not None:
        path.write_text(content)
    assert main(["check", bakes["x86_64_v3"].ref.split("@")[0], "--node-labels", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bakery: error: --node-labels ") and says in err[0], err


def test_an_ir_image_has_no_artifact_and_check_says_why(bakes, registry, capsys):
    assert main(["check", f"{registry}/pi:1.0"]) == 2
    err = capsys.readouterr().err
    assert "is an IR image: it runs on any CPU of its platform" in err and "Traceback" not in err


def test_a_reused_node_tag_without_the_artifact_gets_it(bakes, engine, registry):
    """A node tag pushed before node tags had one (its referrers index gone here) gets it at the next bake."""
    reg = oci.Registry(registry)
    digest = bakes["x86_64_v2"].digest
    index = reg.head_manifest("pi", digest.replace(":", "-"))
    assert index and reg.delete_manifest("pi", index)
    assert not compat.has_artifact(reg, "pi", digest)
    again = imagemod.bake(f"{registry}/pi:1.0", engine, registry, "x86_64_v2")
    assert again.reused and again.digest == digest
    assert compat.fetch(reg, "pi", digest).annotations["dev.bakery.target"] == "x86_64_v2"
