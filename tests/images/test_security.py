"""Attacks on a host-side bake, made for real: hostile IR images on a real registry, baked with
real buildah. Each test first shows that its attack works where it is not stopped, so that a
pass means the refusal, not a harmless attack."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers import REPO

from bakery import images as imagemod
from bakery import oci, safefs
from bakery.errors import BakeryError, CommandFailed, PlanRefused
from bakery.images import base as basemod

pytestmark = pytest.mark.slow

ESCAPE_C = r"""
/* The classic chroot escape: chroot into a subfolder, climb out of it, chroot to the real root. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(void) {
    mkdir("/.x", 0700);
    if (chroot("/.x") != 0) return 1;
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) return 2;
    FILE *f = fopen(MARKER, "w");
    if (!f) return 3;
    fputs("escaped\n", f);
    fclose(f);
    return 0;
}
"""


@pytest.fixture(scope="module")
def escape_program(tmp_path_factory, toolchain):
    d = tmp_path_factory.mktemp("escape")
    marker = d / f"escaped-{uuid.uuid4().hex}"
    (d / "escape.c").write_text(ESCAPE_C)
    subprocess.run([toolchain.clang, "-static", "-O1", f'-DMARKER="{marker}"', "-o", str(d / "escape"),
                    str(d / "escape.c")], check=True)
    return d / "escape", marker


def _mounted(engine, ctr: str) -> Path:
    return Path(subprocess.run(["buildah", "mount", ctr], capture_output=True, text=True, check=True).stdout.strip())


def hostile_image(engine, registry: str, images, name: str, *, edit=None, plan_edit=None,
                  annotations: dict | None = None) -> str:
    """The pi IR image, changed as an attacker would (files through a mount: nothing runs),
    pushed as ``name:1.0`` with a plan artifact that matches its own plan.json."""
    res = images.ir("pi")
    reg = oci.Registry(registry)
    src = f"{registry}/pi:1.0"
    engine.pull(src, tls_verify=False)
    ctr = engine.from_image(src)
    try:
        root = _mounted(engine, ctr)
        plan_bytes = reg.get_blob("pi", res.plan_digest)
        if plan_edit:
            plan = json.loads(plan_bytes)
            plan_edit(plan)
            plan_bytes = json.dumps(plan).encode()
            (root / "bakery/bundle/plan.json").write_bytes(plan_bytes)
        if edit:
            edit(root)
        subprocess.run(["buildah", "umount", ctr], check=True, capture_output=True)
        if annotations:
            engine.configure(ctr, annotations=annotations)
        local = f"localhost/tampered/{name}:1.0"
        engine.commit(ctr, local)
    finally:
        engine.remove(ctr)
    digest = engine.push(local, f"{registry}/{name}:1.0", tls_verify=False)
    data, mt, _ = reg.get_manifest(name, digest)
    plan_file = Path(f"/tmp/bakery-test-plan-{uuid.uuid4().hex}.json")
    try:
        plan_file.write_bytes(plan_bytes)
        oci.push_plan(reg, name, {"mediaType": mt, "digest": digest, "size": len(data)}, plan_file)
    finally:
        plan_file.unlink()
    return f"{registry}/{name}:1.0"


def test_escape_program_in_the_ir_image_never_runs(images, engine, registry, escape_program):
    """The image's python3 and clang are replaced by a chroot escape that writes a file on the host.
    It does escape under `buildah run --isolation=chroot` (the old bake ran the image's own python3
    that way); the bake must run none of the image's binaries, and still bake the genuine bundle."""
    program, marker = escape_program
    src = f"{registry}/pi:1.0"
    images.ir("pi")
    engine.pull(src, tls_verify=False)
    ctr = engine.from_image(src)
    try:  # the attack is real
        root = _mounted(engine, ctr)
        (root / "escape").write_bytes(program.read_bytes())
        (root / "escape").chmod(0o755)
        subprocess.run(["buildah", "run", "--isolation=chroot", ctr, "--", "/escape"], capture_output=True)
        assert marker.exists(), "the escape did not work under chroot isolation: this test proves nothing"
        marker.unlink()
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
        engine.remove(ctr)

    def plant(root: Path) -> None:
        for rel in ("usr/bin/python3.11", "usr/lib/llvm-16/bin/clang", "usr/bin/ld.lld", "bin/sh"):
            p = root / rel
            if p.is_symlink() or p.exists():
                p.unlink()
            p.write_bytes(program.read_bytes())
            p.chmod(0o755)

    ref = hostile_image(engine, registry, images, "escape", edit=plant)
    res = imagemod.bake(ref, engine, registry, "x86_64")
    assert not marker.exists(), "the bake ran a binary of the IR image"
    assert res.outputs == ["pi"]
    manifest = json.loads(oci.Registry(registry).get_manifest("escape", res.digest)[0])
    tool = manifest["annotations"]["dev.bakery.toolchain.image"]
    assert tool == engine.image_id(basemod.names(registry, 16).llvm)
    # Through the registry's API alone (--engine none), the same.
    res = imagemod.bake(ref, None, registry, "x86_64_v2")
    assert not marker.exists() and res.outputs == ["pi"]


def test_bundle_symlinked_to_a_host_folder_is_refused(images, engine, registry, tmp_path):
    """/bakery/bundle -> a host folder: the old export copied the host folder."""
    secret = tmp_path / "host-secret"
    secret.mkdir()
    (secret / "credentials").write_text("hunter2")
    (secret / "plan.json").write_bytes(oci.Registry(registry).get_blob("pi", images.ir("pi").plan_digest))

    def relink(root: Path) -> None:
        subprocess.run(["rm", "-rf", str(root / "bakery/bundle")], check=True)
        (root / "bakery/bundle").symlink_to(secret)

    ref = hostile_image(engine, registry, images, "linkedbundle", edit=relink)
    for eng in (engine, None):
        with pytest.raises(PlanRefused, match="symlink"):
            imagemod.bake(ref, eng, registry, "x86_64")
    assert oci.Registry(registry).head_manifest("linkedbundle", "1.0-x86_64") is None


def test_symlink_inside_the_bundle_is_refused(images, engine, registry):
    def link(root: Path) -> None:
        bc = next((root / "bakery/bundle/bitcode").iterdir())
        bc.unlink()
        bc.symlink_to("/etc/shadow")

    ref = hostile_image(engine, registry, images, "linkedbitcode", edit=link)
    for eng in (engine, None):
        with pytest.raises(PlanRefused, match=r"bitcode/.*symlink"):
            imagemod.bake(ref, eng, registry, "x86_64")


def test_bundle_over_the_size_limit_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "b").mkdir(parents=True)
    for i in range(5):
        (root / "b" / f"f{i}").write_bytes(b"x" * 1000)
    with pytest.raises(PlanRefused, match="more than 3 files"):
        safefs.copy_tree(root, "/b", tmp_path / "out1", limits=safefs.Limits(max_files=3))
    with pytest.raises(PlanRefused, match="MiB"):
        safefs.copy_tree(root, "/b", tmp_path / "out2", limits=safefs.Limits(max_bytes=4000))
    os.mkfifo(root / "b" / "fifo")
    with pytest.raises(PlanRefused, match="FIFO"):
        safefs.copy_tree(root, "/b", tmp_path / "out3")


def test_only_the_plans_install_names_are_committed_and_never_through_a_link(tmp_path):
    """What the bake leaves in its output folder: a symlink to the credentials file under an install
    name is refused; a file that is no install name is left behind. `buildah copy`, which the old
    commit used, follows such a link (shown first)."""
    creds = tmp_path / "auth.json"
    creds.write_text('{"auths": {"registry": {"auth": "c2VjcmV0"}}}')
    out = tmp_path / "out"
    out.mkdir()
    (out / "pi").symlink_to(creds)
    ctr = subprocess.run(["buildah", "from", "-q", "scratch"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["buildah", "copy", ctr, str(out / "pi"), "/pi"], check=True, capture_output=True)
        root = _mounted(None, ctr)
        assert (root / "pi").read_text() == creds.read_text(), "buildah copy no longer follows links"
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    with pytest.raises(PlanRefused, match="pi is a symlink"):
        safefs.stage_outputs(out, ["pi"], tmp_path / "stage1")
    (out / "pi").unlink()
    (out / "pi").mkdir()
    with pytest.raises(PlanRefused, match="not a regular file"):
        safefs.stage_outputs(out, ["pi"], tmp_path / "stage2")
    (out / "pi").rmdir()
    (out / "pi").write_bytes(b"\x7fELF")
    (out / "extra").symlink_to(creds)
    staged = safefs.stage_outputs(out, ["pi"], tmp_path / "stage3")
    assert [p.name for p in staged] == ["pi"] and sorted(os.listdir(tmp_path / "stage3")) == ["pi"]
    assert (tmp_path / "stage3" / "pi").stat().st_mode & 0o777 == 0o755
    with pytest.raises(PlanRefused, match="did not write"):
        safefs.stage_outputs(out, ["missing"], tmp_path / "stage4")


def test_slim_base_named_by_the_image_must_be_its_own(images, engine, registry):
    """The IR image names a private image as its runtime base; a slim bake would pull it with the
    baker's credentials and push it under the attacker's -slim tag."""
    private = basemod.names(registry, 16).remote(basemod.names(registry, 16).build)
    ref = hostile_image(engine, registry, images, "slimthief",
                        annotations={"dev.bakery.runtime.base": private})
    for eng in (engine, None):
        with pytest.raises(PlanRefused, match="does not sit on the runtime base"):
            imagemod.bake(ref, eng, registry, "x86_64", slim=True)
    assert oci.Registry(registry).head_manifest("slimthief", "1.0-x86_64-slim") is None


def test_plan_asking_for_another_llvm_builds_nothing(images, engine, registry):
    """A plan's llvm_major once made a bake build base images for any LLVM version."""
    assert imagemod.toolchain_major(15) == 16  # older bitcode is read by LLVM 16

    def future(plan: dict) -> None:
        plan["toolchain"]["llvm_major"] = 99

    ref = hostile_image(engine, registry, images, "futurellvm", plan_edit=future)
    before = subprocess.run(["buildah", "images", "-aq"], capture_output=True, text=True).stdout
    with pytest.raises(PlanRefused, match="needs LLVM 99 or newer"):
        imagemod.bake(ref, engine, registry, "x86_64")
    after = subprocess.run(["buildah", "images", "-aq"], capture_output=True, text=True).stdout
    assert after == before


def test_bake_container_has_no_network_no_capabilities_and_a_read_only_bundle(engine, registry, images, tmp_path):
    images.ir("pi")
    tool_name, tool_id = imagemod.trusted_toolchain(engine, registry, 16, tls=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    host, port = registry.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # the registry answers from the host
    probe = ("import os, socket\n"
             "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]\n"
             "print('uid', os.getuid(), 'caps', caps)\n"
             "try:\n"
             "    open('/in/x', 'w')\n"
             "    print('bundle writable')\n"
             "except OSError:\n"
             "    print('bundle read-only')\n"
             "try:\n"
             f"    socket.create_connection(({host!r}, {port}), timeout=3)\n"
             "    print('network')\n"
             "except OSError:\n"
             "    print('no network')\n")
    ctr = engine.from_image(tool_id)
    lines: list[str] = []
    try:
        engine.run(ctr, ["python3", "-c", probe], volumes=[(str(ro), "/in", "ro")], sandbox=True, timeout=60,
                   on_line=lines.append)
    finally:
        engine.remove(ctr)
    assert lines == ["uid 65534 caps 0000000000000000", "bundle read-only", "no network"], lines


def test_bake_time_limit_stops_the_bake_and_its_container(images, engine, registry):
    images.ir("kernel")
    before = set(engine.containers())
    with pytest.raises(CommandFailed, match="time limit of 0.5 s"):
        imagemod.bake(f"{registry}/kernel:1.0", engine, registry, "x86_64_v2", output=Path("/tmp/never"),
                      timeout=0.5)
    assert set(engine.containers()) <= before
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "--output /bakery/out" not in ps
    with pytest.raises(BakeryError, match="expected seconds > 0"):
        imagemod.bake_timeout(0)


@pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")
def test_serve_as_k8s_serve_deploys_it(images, registry, tmp_path, monkeypatch):
    """The pod `bakery k8s serve` renders, run here: the registry asks for a password (htpasswd),
    serve bakes with --engine none and its own login. An anonymous pull is told to log in and bakes
    nothing; a pull with the client's login bakes the node tag once, and it runs."""
    import base64
    import crypt  # bcrypt, as distribution's htpasswd wants: Debian's libxcrypt has it

    from helpers import Service
    from test_serve import get_manifest

    from bakery.images import registry as registrymod

    res = images.ir("pi")
    (tmp_path / "htpasswd").write_text("bob:" + crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH)) + "\n")
    for k, v in {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "bakery",
                 "REGISTRY_AUTH_HTPASSWD_PATH": str(tmp_path / "htpasswd")}.items():
        monkeypatch.setenv(k, v)
    emb = registrymod.Embedded(tmp_path / "reg")
    (tmp_path / "reg").mkdir()
    addr = emb.start(port=0)
    for k in ("REGISTRY_AUTH", "REGISTRY_AUTH_HTPASSWD_REALM", "REGISTRY_AUTH_HTPASSWD_PATH"):
        monkeypatch.delenv(k)
    try:
        auth = tmp_path / "auth.json"
        auth.write_text(json.dumps({"auths": {addr: {"auth": base64.b64encode(b"bob:s3cret").decode()}}}))
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
        subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                        f"docker://{registry}/pi:1.0", f"docker://{addr}/pi:1.0"], check=True, capture_output=True)
        reg = oci.Registry(addr)
        data, mt, digest = reg.get_manifest("pi", "1.0")
        plan_file = tmp_path / "plan.json"
        plan_file.write_bytes(oci.Registry(registry).get_blob("pi", res.plan_digest))
        oci.push_plan(reg, "pi", {"mediaType": mt, "digest": digest, "size": len(data)}, plan_file)
        svc = Service(addr, tmp_path / "serve.log", "--engine", "none", "--policy",
                      str(REPO / "bakery/data/registry/lazy-policy.yaml")).start()
        try:
            monkeypatch.setenv("REGISTRY_AUTH_FILE", "/nonexistent")  # the client: anonymous first
            status, headers, _ = get_manifest(svc.addr, "pi", "1.0-x86_64_v3")
            assert status == 401 and headers["www-authenticate"].lower().startswith("basic")
            assert reg.head_manifest("pi", "1.0-x86_64_v3") is None and not svc.bakes()
            cp = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", "bob:s3cret",
                                 f"docker://{svc.addr}/pi:1.0-x86_64_v3"], capture_output=True, text=True, timeout=600)
            assert cp.returncode == 0, cp.stderr + svc.log()
            assert json.loads(cp.stdout)["annotations"]["dev.bakery.target"] == "x86_64_v3"
            (bake,) = svc.bakes()
            assert bake["outcome"] == "succeeded", bake
        finally:
            svc.stop()
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
        subprocess.run(["buildah", "pull", "-q", "--tls-verify=false", "--creds", "bob:s3cret",
                        f"docker://{addr}/pi:1.0-x86_64_v3"], check=True, capture_output=True)
        ctr = subprocess.run(["buildah", "from", "--pull-never", f"{addr}/pi:1.0-x86_64_v3"], check=True,
                             capture_output=True, text=True).stdout.strip()
        try:
            out = subprocess.run(["buildah", "run", "--isolation=chroot", ctr, "--", "pi", "100000", "2"],
                                 capture_output=True, text=True, check=True).stdout
            assert "pi = 3.14159" in out
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
            subprocess.run(["buildah", "rmi", "-f", f"{addr}/pi:1.0-x86_64_v3"], capture_output=True)
    finally:
        emb.stop()
