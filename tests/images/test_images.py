"""IR images and node tags on a real registry, built and run with real buildah."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import EXAMPLE_NAMES, EXAMPLES

from bakery import images as imagemod
from bakery import oci
from bakery.errors import BakeryError, PlanRefused

pytestmark = pytest.mark.slow


def skopeo(ref: str, raw: bool = False) -> dict:
    argv = ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"]
    if raw:
        argv.insert(2, "--raw")
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def run_in_image(engine, ref: str, argv: list[str], volumes=()) -> str:
    engine.pull(ref, tls_verify=False)
    ctr = engine.from_image(ref)
    try:
        cmd = ["buildah", "run", "--isolation=chroot"]
        for src, dest in volumes:
            cmd += ["-v", f"{src}:{dest}"]
        cp = subprocess.run([*cmd, ctr, "--", *argv], capture_output=True, text=True, timeout=300)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        return cp.stdout
    finally:
        engine.remove(ctr)


def test_plan_artifact_is_attached_and_discoverable(images, registry):
    res = images.ir("pi")
    reg = oci.Registry(registry)
    ref = oci.Ref.parse(res.ref)
    # The referrers tag schema (CNCF distribution has no referrers API).
    index = json.loads(reg.get_manifest(ref.repository, res.digest.replace(":", "-"))[0])
    assert [m["artifactType"] for m in index["manifests"]] == ["application/vnd.bakery.plan.v1+json"]
    digest, plan, _ = imagemod.resolve_ir(reg, oci.Ref.parse(f"{registry}/pi:1.0"))
    assert digest == res.digest and plan.app.to_json() == {"name": "pi", "version": "1.0"}
    manifest = json.loads(reg.get_manifest(ref.repository, res.digest)[0])
    assert manifest["annotations"]["dev.bakery.toolchain"] == "llvm-16"


def test_inspect_cli(images, registry, capsys):
    from bakery.cli import main

    images.ir("pi")
    assert main(["inspect", f"{registry}/pi:1.0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["outputs"] == ["pi"] and info["referrers"]


def test_node_tag_is_ir_plus_one_thin_layer(images, engine, registry, tmp_path):
    images.ir("shapes")
    res = imagemod.bake(f"{registry}/shapes:1.0", engine, registry, "x86_64_v3")
    assert not res.reused and res.ref.startswith(f"{registry}/shapes:1.0-x86_64_v3@")
    ir = skopeo(f"{registry}/shapes:1.0", raw=True)["layers"]
    node = skopeo(f"{registry}/shapes:1.0-x86_64_v3", raw=True)["layers"]
    assert [l["digest"] for l in node[:-1]] == [l["digest"] for l in ir]
    out = imagemod.bake(f"{registry}/shapes:1.0", engine, registry, "x86_64_v3", output=tmp_path / "bin")
    compressed = sum(len(gzip.compress((tmp_path / "bin" / n).read_bytes())) for n in out.outputs)
    assert node[-1]["size"] <= 1.1 * compressed, (node[-1]["size"], compressed)


def test_second_bake_reuses_the_tag_from_a_clean_store(images, engine, registry):
    images.ir("pi")
    t0 = time.monotonic()
    first = imagemod.bake(f"{registry}/pi:1.0", engine, registry, "x86_64_v2")
    first_s = time.monotonic() - t0
    for img in (first.ref.split("@")[0], f"{registry}/pi:1.0"):
        engine.remove_image(img)
    t0 = time.monotonic()
    again = imagemod.bake(f"{registry}/pi:1.0", engine, registry, "x86_64_v2")
    assert again.reused and again.digest == first.digest
    assert time.monotonic() - t0 <= max(0.1 * first_s, 0.5)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_verify_passes_inside_the_baked_image(images, engine, registry, builds, name):
    images.ir(name)
    res = imagemod.bake(f"{registry}/{name}:1.0", engine, registry, "x86_64_v3")
    inside = run_in_image(engine, res.ref.split("@")[0], ["/verify/verify", "/usr/local/bin"],
                          volumes=[(str(EXAMPLES / name), "/verify")])
    from helpers import run_verify

    assert inside == run_verify(name, builds.from_source(name))


def test_slim_has_runtime_base_plus_one_layer(images, engine, registry):
    images.ir("pi")
    res = imagemod.bake(f"{registry}/pi:1.0", engine, registry, "x86_64", slim=True)
    layers = skopeo(res.ref.split("@")[0], raw=True)["layers"]
    base = skopeo(f"{registry}/bakery/debian:bookworm", raw=True)["layers"]
    assert [l["digest"] for l in layers[:-1]] == [l["digest"] for l in base]
    assert "pi = 3.14159" in run_in_image(engine, res.ref.split("@")[0], ["pi", "100000", "2"])


def test_registry_only_bake_needs_no_engine(images, engine, registry):
    """--engine none: the bundle from the layer blobs, the node layer pushed through the registry's
    API. The tag is the IR image plus one layer and runs as a buildah-made one does; slim too."""
    images.ir("pi")
    res = imagemod.bake(f"{registry}/pi:1.0", None, registry, "broadwell")  # baked by no other test
    assert not res.reused and res.outputs == ["pi"]
    ir = skopeo(f"{registry}/pi:1.0", raw=True)["layers"]
    node = skopeo(f"{registry}/pi:1.0-broadwell", raw=True)
    assert [l["digest"] for l in node["layers"][:-1]] == [l["digest"] for l in ir]
    assert node["annotations"]["dev.bakery.target"] == "broadwell"
    assert "pi = 3.14159" in run_in_image(engine, res.ref.split("@")[0], ["pi", "100000", "2"])
    assert imagemod.bake(f"{registry}/pi:1.0", None, registry, "broadwell").reused
    slim = imagemod.bake(f"{registry}/pi:1.0", None, registry, "broadwell", slim=True)
    base = skopeo(f"{registry}/bakery/debian:bookworm", raw=True)["layers"]
    assert [l["digest"] for l in skopeo(slim.ref.split("@")[0], raw=True)["layers"][:-1]] == [l["digest"] for l in base]
    assert "pi = 3.14159" in run_in_image(engine, slim.ref.split("@")[0], ["pi", "100000", "2"])


def test_runtime_packages_are_linked_in_the_trusted_toolchain(engine, registry, tmp_path):
    """A plan that links a -dev package's library (zlib): the bake runs in bakery's toolchain image,
    not the IR image that has the package, so the toolchain image gets the plan's packages (from
    Debian, once per set) and the link finds -lz."""
    from helpers import write_project

    recipe_file = write_project(tmp_path, "zpi", {"z.c": """
        #include <stdio.h>
        #include <zlib.h>
        int main(void) { printf("crc=%lu\\n", crc32(0L, (const unsigned char *)"bakery", 6)); return 0; }
        """, "Makefile": "zpi: z.c\n\t$(CC) -O2 -o zpi z.c -lz\n"},
        "build: {system: make}\noutputs: [zpi]\nruntime: {packages: [zlib1g-dev]}\nentrypoint: [zpi]\n")
    from bakery import recipe as recipemod

    built = imagemod.build(recipemod.load(recipe_file), engine, registry)
    res = imagemod.bake(built.ref, engine, registry, "x86_64_v2")
    import zlib

    assert run_in_image(engine, res.ref.split("@")[0], ["zpi"]).strip() == f"crc={zlib.crc32(b'bakery')}"


def test_tampered_plan_artifact_is_refused(images, engine, registry, tmp_path):
    res = images.ir("pi")
    reg = oci.Registry(registry)
    ref = oci.Ref.parse(res.ref)
    plan = json.loads(reg.get_blob(ref.repository, res.plan_digest))
    next(iter(plan["modules"].values()))["flags"].append("-O1")  # an allowed flag: only the digest can tell
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    data, mt, digest = reg.get_manifest(ref.repository, res.digest)
    oci.push_plan(reg, ref.repository, {"mediaType": mt, "digest": digest, "size": len(data)}, p)
    try:
        with pytest.raises(PlanRefused, match="differs"):
            imagemod.bake(f"{registry}/pi:1.0", engine, registry, "excavator")  # baked nowhere else
        assert reg.head_manifest(ref.repository, "1.0-excavator") is None
    finally:
        images._built.pop("pi", None)  # rebuild with a fresh artifact for later tests
        tag = res.digest.replace(":", "-")
        index = json.loads(reg.get_manifest(ref.repository, tag)[0])
        index["manifests"] = index["manifests"][:1]
        reg.put_manifest(ref.repository, tag, json.dumps(index).encode(), oci.INDEX)


def test_tampered_bitcode_layer_is_refused(images, engine, registry, tmp_path):
    """An image whose bitcode differs from what its (genuine) plan says: the bake refuses it."""
    res = images.ir("pi")
    reg = oci.Registry(registry)
    plan = json.loads(reg.get_blob("pi", res.plan_digest))
    sha = next(iter(plan["modules"]))
    engine.pull(f"{registry}/pi:1.0", tls_verify=False)
    ctr = engine.from_image(f"{registry}/pi:1.0")
    try:
        subprocess.run(["buildah", "run", "--isolation=chroot", ctr, "--", "sh", "-c",
                        f"printf x >> /bakery/bundle/bitcode/{sha}.bc"], check=True)
        engine.commit(ctr, "localhost/tampered/pi:1.0")
    finally:
        engine.remove(ctr)
    digest = engine.push("localhost/tampered/pi:1.0", f"{registry}/tampered:1.0", tls_verify=False)
    data, mt, _ = reg.get_manifest("tampered", digest)
    plan_file = tmp_path / "plan.json"
    plan_file.write_bytes(reg.get_blob("pi", res.plan_digest))  # the genuine plan, re-attached
    oci.push_plan(reg, "tampered", {"mediaType": mt, "digest": digest, "size": len(data)}, plan_file)
    with pytest.raises(PlanRefused, match="tampered"):
        imagemod.bake(f"{registry}/tampered:1.0", engine, registry, "x86_64")
    assert reg.head_manifest("tampered", "1.0-x86_64") is None


def test_killed_bake_leaves_no_tag_and_a_rerun_succeeds(images, registry):
    """kill -9 at several points of a bake (pull, bake, commit, push): never a broken tag.

    Either the tag is absent, or (killed after the manifest went up) it is complete:
    its manifest and every blob it names are there.
    """
    images.ir("kernel")
    reg = oci.Registry(registry)

    def argv(target):
        return [sys.executable, "-m", "bakery", "-q", "bake", f"{registry}/kernel:1.0", "-t", target]

    t0 = time.monotonic()
    subprocess.run(argv("x86_64_v2"), check=True, capture_output=True, timeout=600)
    full = time.monotonic() - t0
    absent = 0
    # Targets no other test bakes, so each run starts without the tag.
    for fraction, target in ((0.2, "bulldozer"), (0.5, "piledriver"), (0.8, "steamroller")):
        p = subprocess.Popen(argv(target), start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(fraction * full)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            digest = reg.head_manifest("kernel", f"1.0-{target}")
            if digest is None:
                absent += 1
            else:
                manifest = json.loads(reg.get_manifest("kernel", digest)[0])
                for blob in [manifest["config"], *manifest["layers"]]:
                    assert reg.blob_exists("kernel", blob["digest"]), f"{target}: tag without {blob}"
        cp = subprocess.run(argv(target), capture_output=True, text=True, timeout=600)
        assert cp.returncode == 0, cp.stderr
        assert reg.head_manifest("kernel", f"1.0-{target}")
    assert absent >= 1, "no kill landed before the push: the test proved nothing"
    # Nor a broken image in the node's store: a commit killed half-way once left an image without
    # its manifest, and every later 'buildah images' / 'podman images' on the node failed.
    cp = subprocess.run(["buildah", "images", "-q"], capture_output=True, text=True)
    assert cp.returncode == 0 and "locating item" not in cp.stderr, cp.stderr


def test_unknown_reference_is_clear(engine, registry):
    with pytest.raises(BakeryError, match="not found"):
        imagemod.bake(f"{registry}/nosuch:1.0", engine, registry, "x86_64")


def test_unreachable_registry_is_clear(engine):
    with pytest.raises(BakeryError, match="unreachable"):
        imagemod.bake("127.0.0.1:9/pi:1.0", engine, "127.0.0.1:9", "x86_64")


def test_registry_that_never_answers_is_a_clear_error_not_a_hang(monkeypatch):
    """A registry that accepts connections and never answers (a wedged proxy) must not hang a node."""
    import socket

    monkeypatch.setenv("BAKERY_REGISTRY_TIMEOUT", "0.5")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        addr = f"127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(BakeryError, match=r"did not answer .* within 0.5 s \(3 attempts\)"):
            oci.Registry(addr).head_manifest("pi", "1.0")
        assert time.monotonic() - t0 < 30


def test_registry_timeout_setting_is_checked(monkeypatch):
    monkeypatch.setenv("BAKERY_REGISTRY_TIMEOUT", "soon")
    with pytest.raises(BakeryError, match="BAKERY_REGISTRY_TIMEOUT='soon'"):
        oci.Registry("127.0.0.1:9")


def test_slim_refuses_outputs_whose_libraries_the_runtime_base_lacks(images, engine, registry, toolchain, tmp_path):
    """An OpenMP program loads libomp.so.5, which the debootstrap runtime base does not have: a slim
    node image of it could not start, so the bake says so instead of pushing it."""
    base = f"{registry}/bakery/debian:bookworm"
    if not engine.exists(base):
        engine.pull(base, tls_verify=False)
    (tmp_path / "omp.c").write_text('#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n')
    out = tmp_path / "bin"
    out.mkdir()
    subprocess.run([toolchain.clang, "-O2", "-fopenmp", "-o", str(out / "omp"), str(tmp_path / "omp.c")], check=True)
    (out / "plain").write_bytes(images.builds.baked("pi", "x86_64").joinpath("pi").read_bytes())
    assert imagemod.slim_missing_libraries(engine, base, out) == ["libomp.so.5"]
    (out / "omp").unlink()
    assert imagemod.slim_missing_libraries(engine, base, out) == []
