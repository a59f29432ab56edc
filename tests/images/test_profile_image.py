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
    # the tag name marks it too: the same manifest under <node tag>-pgo-<12 hex of the profile>
    marked = f"prof-x86_64_v2-pgo-{attached[0]['annotations'][profiles.DIGEST].removeprefix('sha256:')[:12]}"
    assert pgo.profile_tag == f"{registry}/pi:{marked}" and plain.profile_tag is None
    assert reg.head_manifest("pi", marked) == pgo.digest
    again = imagemod.bake(ref, engine, registry, "x86_64_v2")
    assert again.reused and again.digest == pgo.digest and again.profile_tag == pgo.profile_tag


def test_the_launchers_own_bake_takes_the_images_profile(own_pi, registry, tmp_path, monkeypatch):
    """No node tag for the target: the launcher bakes in its container, with the profile attached
    to its image, and its cache entry says which."""
    from bakery import target as targetmod
    from bakery.config import Settings
    from bakery.images import direct
    from bakery.launch import finish, install
    from bakery.launch.cache import Cache, entry_key

    reg, digest, ref = own_pi
    if not reg.referrers("pi", digest, profiles.ARTIFACT):  # run alone: this module's first test attaches one
        assert main(["-q", "profile", ref, "-t", "x86_64_v2", "--", "pi", "2000000"]) == 0
    direct.export_bundle(reg, "pi", digest, "/bakery/bundle", tmp_path / "bundle")
    info = install.info(tmp_path / "bundle", ref, "linux/amd64", ["linux/amd64"])
    info["bundle"] = str(tmp_path / "bundle")
    monkeypatch.delenv("BAKERY_REGISTRY", raising=False)
    monkeypatch.setenv("BAKERY_PUSH", "1")  # and pushed for the next node, saying which profile
    said: list[str] = []
    target = targetmod.resolve("x86_64_v3", compiler_version=info["compiler"], family=info["family"])
    cache = Cache(tmp_path / "cache")
    key = entry_key(info["app"], info["version"], info["plan"], "x86_64_v3")
    finish.make(info, target, cache, key, Settings.from_env(), said.append)
    record = cache.check(key, info["plan"], "x86_64_v3")
    assert record and record["source"] == "bake" and record["profile"].startswith("sha256:"), said
    assert any("with the profile attached to the image" in line for line in said)
    pushed = reg.head_manifest("pi", "prof-x86_64_v3")
    assert pushed, said
    ann = json.loads(reg.get_manifest("pi", pushed)[0])["annotations"]
    assert ann["dev.bakery.profile.digest"] == record["profile"]
    assert reg.head_manifest("pi", f"prof-x86_64_v3-pgo-{record['profile'].removeprefix('sha256:')[:12]}") == pushed


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
