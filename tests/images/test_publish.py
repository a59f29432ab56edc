"""bakery publish on a real registry: one tag whose index skopeo and podman resolve per CPU."""

import json
import subprocess

import pytest

from bakery import images as imagemod
from bakery import oci
from bakery.cli import main
from bakery.errors import BakeryError
from bakery.images import publish as publishmod

pytestmark = pytest.mark.slow


def _chosen(ref: str, *variant: str) -> list[str]:
    """The layers of the image skopeo picks from REF for linux/amd64 (and the variant, when
    given); its "Digest" is the index's."""
    argv = ["skopeo", "inspect", "--tls-verify=false", "--override-os", "linux", "--override-arch", "amd64",
            *(["--override-variant", variant[0]] if variant else []), f"docker://{ref}"]
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return out["Layers"]


def _podman_image(ref: str, *variant: str) -> str:
    argv = ["podman", "pull", "-q", "--tls-verify=false", "--arch", "amd64", *(["--variant", variant[0]] if variant else []),
            ref]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def published(images, registry):
    res = images.ir("pi")
    reg = oci.Registry(registry)
    data, media_type, _ = reg.get_manifest("pi", res.digest)
    reg.put_manifest("pi", "pub", data, media_type)  # a tag of its own: pi:1.0 stays the IR image for the others
    return res, reg, f"{registry}/pi:pub"


def test_the_index_lists_the_ir_image_first_and_the_levels_as_variants(published, capsys):
    res, reg, ref = published
    assert main(["-q", "publish", ref, "--targets", "x86_64_v2,x86_64_v3,zen4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    index, media_type, digest = reg.get_manifest("pi", "pub")
    doc = json.loads(index)
    assert media_type == oci.INDEX and digest == out["digest"]
    got = [(m["platform"]["architecture"], m["platform"].get("variant"), m["annotations"]["dev.bakery.role"],
            m["annotations"].get("dev.bakery.target"), m["digest"]) for m in doc["manifests"]]
    v2, v3 = reg.head_manifest("pi", "pub-x86_64_v2"), reg.head_manifest("pi", "pub-x86_64_v3")
    assert got == [("amd64", None, "ir", None, res.digest), ("amd64", "v2", "bake", "x86_64_v2", v2),
                   ("amd64", "v3", "bake", "x86_64_v3", v3)]
    assert all(m["annotations"]["dev.bakery.ir.digest"] == res.digest for m in doc["manifests"][1:])
    assert "-march=x86-64-v3" in doc["manifests"][2]["annotations"]["dev.bakery.target.flags"]
    # an exact model is a tag, not an entry a runtime could pick for another CPU of its level
    assert [t.split("@")[0] for t in out["tags"]] == [ref + "-zen4"] and reg.head_manifest("pi", "pub-zen4")
    # the IR image stays reachable under REF-ir
    ir_index = json.loads(reg.get_manifest("pi", "pub-ir")[0])
    assert [m["digest"] for m in ir_index["manifests"]] == [res.digest]


def test_skopeo_and_podman_choose_by_variant(published):
    res, reg, ref = published
    v2, v3, ir = (_chosen(f"{ref}{tag}") for tag in ("-x86_64_v2", "-x86_64_v3", "-ir"))
    assert len(v3) == len(ir) + 1 and v2[:-1] == ir and v2 != v3  # each a thin layer on the IR image
    assert _chosen(ref, "v3") == v3 and _chosen(ref, "v2") == v2
    assert _chosen(ref) == ir  # no variant asked: the self-finishing IR image
    assert _podman_image(ref, "v3") == _podman_image(ref.replace(":pub", ":pub-x86_64_v3"))
    assert _podman_image(ref) == _podman_image(f"{ref.split('/')[0]}/pi@{res.digest}")


def test_a_published_index_is_baked_from_and_published_again_in_place(published, engine, registry, capsys):
    res, reg, ref = published
    v3 = reg.head_manifest("pi", "pub-x86_64_v3")
    again = imagemod.bake(ref, engine, registry, "x86_64_v3")  # REF is an index now: its IR entry is used
    assert again.reused and again.digest == v3
    before = reg.head_manifest("pi", "pub")
    assert main(["-q", "publish", ref, "--targets", "x86_64_v3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["digest"] == before  # v2 kept (baked from the same IR image), nothing changed
    assert [e["variant"] for e in out["entries"]] == ["", "v2", "v3"]


def test_publish_refuses_a_reference_without_a_tag_and_one_that_is_not_there(registry):
    with pytest.raises(BakeryError, match="needs a tag"):
        publishmod.publish(f"{registry}/pi@sha256:" + "0" * 64, ["x86_64_v3"], registry, None)
    with pytest.raises(BakeryError, match="not found"):
        publishmod.publish(f"{registry}/nothing:1.0", ["x86_64_v3"], registry, None)


def test_matrix_publish_writes_the_index_of_what_it_baked(published, registry):
    """`bakery matrix --publish`: an index per IR image, of the pairs that did not fail (the node
    tags are there: nothing is baked again)."""
    import argparse

    from bakery.cli import matrix as matrixcli
    from bakery.scale.matrix import MatrixResult

    res, reg, ref = published
    before = reg.head_manifest("pi", "pub")
    result = MatrixResult(registry, [{"recipe": "pi.yaml", "ref": f"{ref}@{res.digest}", "status": "reused"}],
                          [{"recipe": "pi.yaml", "target": "x86_64_v3", "status": "reused"},
                           {"recipe": "pi.yaml", "target": "neoverse_n1", "status": "failed"}], 0.0)
    out = matrixcli._publish(result, registry, argparse.Namespace(engine=None, tls_verify=None))
    assert [o["ref"] for o in out] == [ref] and out[0]["digest"] == before  # v2 kept, v3 reused: the same index
    assert [e["variant"] for e in out[0]["entries"]] == ["", "v2", "v3"]
