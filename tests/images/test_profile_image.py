"""Profiles of IR images on a real registry: bakery profile IMAGE attaches one, node bakes use it."""

import json

import pytest

from bakery import images as imagemod
from bakery import oci
from bakery.cli import main
from bakery.images import profiles

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_pi(images, registry, tmp_path_factory):
    """pi's IR image under a digest of its own: referrers hang on a digest, and the session's other
    tests bake pi:1.0 without a profile."""
    res = images.ir("pi")
    reg = oci.Registry(registry)
    data, media_type, _ = reg.get_manifest("pi", res.digest)
    doc = json.loads(data)
    doc.setdefault("annotations", {})["dev.bakery.test"] = "a copy for profiles"
    copy = json.dumps(doc).encode()
    digest = reg.put_manifest("pi", "prof", copy, media_type)
    plan = tmp_path_factory.mktemp("plan") / "plan.json"
    plan.write_bytes(oci.fetch_plan(reg, "pi", res.digest)[0])
    oci.push_plan(reg, "pi", {"mediaType": media_type, "digest": digest, "size": len(copy)}, plan)
    return reg, digest, f"{registry}/pi:prof"


def test_a_profile_trained_on_an_image_is_attached_and_node_bakes_use_it(own_pi, engine, registry, capsys):
    reg, digest, ref = own_pi
    plain = imagemod.bake(ref, engine, registry, "x86_64_v2")  # before any profile
    assert main(["-q", "profile", ref, "-t", "x86_64_v2", "--", "pi", "2000000"]) == 0
    out = capsys.readouterr().out.splitlines()
    attached = reg.referrers("pi", digest, profiles.ARTIFACT)
    assert len(attached) == 1 and out[-1].endswith("@" + attached[0]["digest"])
    assert attached[0]["annotations"][profiles.IR] == oci.sha256(oci.fetch_plan(reg, "pi", digest)[0])
    # the node tag baked without it is baked again, with it, and says so; then it is reused
    pgo = imagemod.bake(ref, engine, registry, "x86_64_v2")
    assert not pgo.reused and pgo.digest != plain.digest
    ann = json.loads(reg.get_manifest("pi", pgo.digest)[0])["annotations"]
    assert ann["dev.bakery.profile.digest"] == attached[0]["annotations"][profiles.DIGEST]
    again = imagemod.bake(ref, engine, registry, "x86_64_v2")
    assert again.reused and again.digest == pgo.digest


def test_a_profile_of_another_ir_is_not_used(own_pi, registry, tmp_path):
    reg, digest, _ = own_pi
    folder = tmp_path / "b.profile"
    folder.mkdir()
    (folder / "profile.profdata").write_bytes(b"not a profile")
    (folder / "profile.json").write_text(json.dumps({"ir": "sha256:" + "0" * 64, "profile": oci.sha256(b"not a profile"),
                                                     "runs": [], "toolchain": "16.0.6"}))
    profiles.push(reg, "pi", digest, folder)  # the newest now: made on another IR
    assert profiles.fetch(reg, "pi", digest, oci.sha256(oci.fetch_plan(reg, "pi", digest)[0]),
                          tmp_path / "got.profdata") is None
    assert not (tmp_path / "got.profdata").exists()
