"""bakery matrix: IR images first, then every (recipe, target) node tag, on an embedded Ray."""

import json
import shutil
from dataclasses import replace

import pytest
from helpers import EXAMPLES

from bakery import oci
from bakery.errors import BakeryError
from bakery.scale import matrix


def _recipes(*names):
    return [str(EXAMPLES / n / "recipe.yaml") for n in names]


# -- quick: no Ray, no registry ---------------------------------------------------------------

def test_unknown_target_fails_before_anything_runs():
    with pytest.raises(BakeryError, match="zen33"):
        matrix.run(_recipes("pi"), ["zen33"], "127.0.0.1:1")


def test_an_unreachable_ray_cluster_fails_at_once():
    import time

    t0 = time.monotonic()
    with pytest.raises(BakeryError, match="does not answer"):
        matrix.run(_recipes("pi"), ["zen3"], "127.0.0.1:1", ray_address="127.0.0.1:1")
    assert time.monotonic() - t0 < 10


def test_workers_get_the_drivers_environment(monkeypatch):
    monkeypatch.setenv("BAKERY_ENGINE", "buildah")
    monkeypatch.setenv("BUILDAH_ISOLATION", "chroot")
    monkeypatch.setenv("UNRELATED_SECRET_THING", "x")
    env = matrix.worker_env()
    assert env["BAKERY_ENGINE"] == "buildah" and env["BUILDAH_ISOLATION"] == "chroot" and "PATH" in env
    assert "UNRELATED_SECRET_THING" not in env


def test_summary_table_and_counts():
    res = matrix.MatrixResult(
        "127.0.0.1:5000",
        ir=[{"recipe": "/r/pi/recipe.yaml", "name": "pi", "ref": "127.0.0.1:5000/pi:1.0@sha256:" + "a" * 64,
             "status": "reused", "seconds": 0.1, "error": ""}],
        pairs=[{"recipe": "pi", "target": "zen3", "resolved": "zen3", "ref": "127.0.0.1:5000/pi:1.0-zen3@sha256:"
                + "b" * 64, "digest": "sha256:" + "b" * 64, "status": "baked", "seconds": 12.0, "error": "", "note": ""},
               {"recipe": "pi", "target": "zen5", "resolved": "zen4", "ref": "", "digest": "", "status": "reused",
                "seconds": 0.1, "error": "", "note": ""},
               {"recipe": "pi", "target": "neoverse_n1", "resolved": "", "ref": "", "digest": "", "status": "failed",
                "seconds": 0.0, "error": "target neoverse_n1 is aarch64, but this IR is x86_64", "note": ""}],
        seconds=20.0)
    assert res.counts == {"ir_built": 0, "ir_reused": 1, "ir_failed": 0, "baked": 1, "reused": 1, "failed": 1,
                          "pairs": 3}
    assert not res.ok
    table = matrix.format_table(res)
    assert "pi:1.0-zen3@bbbbbbbbbbbb" in table and "zen5->zen4" in table and "is aarch64" in table
    assert table.splitlines()[0].split() == ["recipe", "target", "ref", "status", "seconds", "error"]
    assert "1 baked, 1 reused, 1 failed (3 pairs)" in table.splitlines()[-1]
    assert json.loads(json.dumps(res.to_json()))["ok"] is False


# -- real: session registry, buildah, embedded Ray ----------------------------------------------

@pytest.mark.slow
def test_ir_reuse_needs_the_same_recipe_and_sources(images, registry, tmp_path):
    from bakery import recipe as recipemod

    built = images.ir("pi")
    pi = recipemod.load(EXAMPLES / "pi" / "recipe.yaml")
    assert matrix.existing_ir(pi, registry) == built.ref
    assert matrix.existing_ir(replace(pi, digest="sha256:" + "0" * 64), registry) is None
    assert matrix.existing_ir(replace(pi, version="0.0-never-built"), registry) is None
    # The same recipe over a copy of its tree is the same input; an edited source is not.
    src = pi.sources[0]
    copy = tmp_path / "src"
    shutil.copytree(src.location, copy)
    moved = replace(pi, sources=[replace(src, location=str(copy))])
    assert matrix.existing_ir(moved, registry) == built.ref
    victim = next(p for p in sorted(copy.rglob("*.c")))
    victim.write_text(victim.read_text() + "\n/* edited */\n")
    assert matrix.existing_ir(moved, registry) is None


@pytest.mark.slow
def test_matrix_bakes_every_pair_once_and_a_rerun_bakes_nothing(images, registry, capsys, tmp_path):
    from bakery.cli import main

    for name in ("pi", "kernel"):
        images.ir(name)  # the session's IR images: the matrix must reuse them (same recipe digest)
    recipes = _recipes("pi", "kernel")

    # Targets no other test names (test_serve asks serve for tags it expects to be missing): the
    # session registry is shared. The tags already there are counted first all the same. clang 16 clamps arrowlake to alderlake: one node tag, one bake.
    reg = oci.Registry(registry)
    tags = [(app, t) for app in ("pi", "kernel") for t in ("k10", "cannonlake", "alderlake")]
    there = sum(1 for app, t in tags if reg.head_manifest(app, f"1.0-{t}"))
    assert there < len(tags), "another test baked every tag of this one: pick other targets"
    first = matrix.run(recipes, ["k10", "cannonlake", "alderlake", "arrowlake"], registry)
    assert first.ok, matrix.format_table(first)
    assert first.counts == {"ir_built": 0, "ir_reused": 2, "ir_failed": 0, "baked": 6 - there, "reused": there,
                            "failed": 0, "pairs": 8}, matrix.format_table(first)
    for app in ("pi", "kernel"):
        for target in ("k10", "cannonlake", "alderlake"):
            digest = reg.head_manifest(app, f"1.0-{target}")
            assert digest and any(p["digest"] == digest for p in first.pairs)
        adl, arl = (next(p for p in first.pairs if p["recipe"] == app and p["target"] == t)
                    for t in ("alderlake", "arrowlake"))
        assert arl["resolved"] == "alderlake" and arl["digest"] == adl["digest"] and "same node tag" in arl["note"]

    # Rerun through the CLI, with a target this x86_64 IR cannot be baked for: nothing is built or
    # baked again, the impossible pairs fail one by one, the others are still reported, exit status 1.
    rc = main(["matrix", *recipes, "--targets", "k10,cannonlake,neoverse_n1", "--registry", registry, "--json",
               "-q"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert out["counts"] == {"ir_built": 0, "ir_reused": 2, "ir_failed": 0, "baked": 0, "reused": 4, "failed": 2,
                             "pairs": 6}
    failed = [p for p in out["pairs"] if p["status"] == "failed"]
    assert {p["target"] for p in failed} == {"neoverse_n1"}
    assert all("aarch64" in p["error"] for p in failed)
    assert all(p["seconds"] < 5 for p in out["pairs"] if p["status"] == "reused")

    # A node tag baked from another IR image (same name and version, other digest) is stale: baked again.
    data, mt, digest = reg.get_manifest("pi", "1.0")
    doc = json.loads(data)
    doc.setdefault("annotations", {})["dev.bakery.test"] = "another build of pi 1.0"
    other = json.dumps(doc).encode()
    other_digest = reg.put_manifest("pi", "1.0-another-build", other, mt)
    plan = tmp_path / "plan.json"
    plan.write_bytes(oci.fetch_plan(reg, "pi", digest)[0])
    oci.push_plan(reg, "pi", {"mediaType": mt, "digest": other_digest, "size": len(other)}, plan)
    stale = matrix.bake_task(f"{registry}/pi:1.0@{other_digest}", "k10", registry)
    assert stale["status"] == "baked", stale
    rebaked = json.loads(reg.get_manifest("pi", "1.0-k10")[0])
    assert rebaked["annotations"]["dev.bakery.ir.digest"] == other_digest
