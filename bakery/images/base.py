"""Base images without Docker Hub: made once from Debian's packages, then cached.

* runtime: Debian bookworm ``minbase`` made with debootstrap;
* llvm:    runtime + Debian's LLVM (what a bake needs, inside the IR image);
* build:   llvm + make/cmake/meson/autotools (the capture stage only).

Each is kept in local container storage and pushed to the registry, so the
next machine pulls instead of rebuilding.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bakery import oci, proc, templates
from bakery.config import Settings
from bakery.engines.base import ContainerEngine
from bakery.errors import BakeryError

log = logging.getLogger(__name__)

SUITE = "bookworm"
LLVM_TEMPLATE = "Containerfiles/llvm.Containerfile.j2"
BUILD_TEMPLATE = "Containerfiles/build.Containerfile.j2"
# What users write for "plain Debian 12"; without Docker Hub it means our own base.
DEBIAN_ALIASES = {"debian:bookworm-slim", "debian:bookworm", "debian:12", "debian:12-slim", "debian"}


@dataclass(frozen=True)
class Bases:
    """Local names (what FROM lines use; the same whatever the registry's port) and
    the registry copies other machines pull."""

    runtime: str
    llvm: str
    build: str
    registry: str | None = None

    def remote(self, local: str) -> str | None:
        if not self.registry or not local.startswith("localhost/"):
            return None
        return f"{self.registry}/{local[len('localhost/'):]}"


def _template_id(*names: str) -> str:
    """Tags carry a digest of their templates: changing one makes a new base."""
    h = hashlib.sha256()
    for name in names:
        h.update(templates.source(name).encode())
    return h.hexdigest()[:8]


def names(registry: str | None, llvm: int, runtime_base: str | None = None) -> Bases:
    if runtime_base and runtime_base not in DEBIAN_ALIASES:
        slug = re.sub(r"[^a-z0-9]+", "-", runtime_base.lower()).strip("-")[:60]
        runtime = runtime_base
    else:
        slug = SUITE
        runtime = f"localhost/bakery/debian:{SUITE}"
    llvm_id = _template_id(LLVM_TEMPLATE)
    build_id = _template_id(LLVM_TEMPLATE, BUILD_TEMPLATE)
    return Bases(runtime, f"localhost/bakery/llvm:{llvm}-{slug}-{llvm_id}",
                 f"localhost/bakery/build:{llvm}-{slug}-{build_id}", registry)


def debian_mirror() -> str:
    """The mirror this machine's apt already uses (or BAKERY_DEBIAN_MIRROR)."""
    mirror = Settings.from_env().debian_mirror
    if mirror:
        return mirror
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(p.read_text())
        except OSError:
            continue
    for text in texts:
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+\S+", text, re.M)
        if m:
            return m.group(1)
    raise BakeryError("cannot find a Debian mirror in /etc/apt", "set BAKERY_DEBIAN_MIRROR to one")


def make_runtime(engine: ContainerEngine, tag: str, arch: str | None = None) -> None:
    """debootstrap minbase; for another architecture, the second stage runs under qemu-user."""
    debootstrap = proc.which("debootstrap")
    if os.geteuid() != 0:
        raise BakeryError("making the Debian base needs root (debootstrap)",
                          "run 'sudo bakery base create' once, or name a runtime.base in a registry you can pull")
    work = Path(tempfile.mkdtemp(prefix="bakery-debootstrap-"))
    try:
        rootfs = work / "rootfs"
        foreign = ["--arch", arch, "--foreign"] if arch else []
        log.info(f"base: debootstrap --variant=minbase {' '.join(foreign)} {SUITE} (a few minutes)")
        proc.stream([debootstrap, "--variant=minbase", *foreign, SUITE, str(rootfs), debian_mirror()],
                    log=work / "log")
        if arch:
            proc.stream(["chroot", str(rootfs), "/debootstrap/debootstrap", "--second-stage"], log=work / "log")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        engine.import_rootfs(rootfs, tag, env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                             cmd=["/bin/bash"], labels={"dev.bakery.base": f"debian-{SUITE}-minbase"}, arch=arch)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_from_template(engine: ContainerEngine, template: str, tag: str, base: str, llvm: int,
                         tls_verify: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bakery-base-") as ctx:
        cf = Path(ctx) / "Containerfile"
        cf.write_text(templates.render_file(template, base=base, llvm=llvm))
        log.info(f"base: building {tag}")
        engine.build(containerfile=cf, context=Path(ctx), tag=tag, tls_verify=tls_verify,
                     log=Path(ctx) / "build.log")


def ensure(engine: ContainerEngine, registry: str, llvm: int, runtime_base: str | None = None, *, tls_verify: bool | None = None, push: bool = True) -> Bases:
    """Make sure the three bases exist locally (pull, else create) and in the registry."""
    b = names(registry, llvm, runtime_base)
    tls = oci.tls_default(registry, tls_verify)
    reg = oci.Registry(registry, tls_verify=tls)
    for local, kind in ((b.runtime, "runtime"), (b.llvm, "llvm"), (b.build, "build")):
        remote = b.remote(local)
        rref = oci.Ref.parse(remote) if remote else None
        in_registry = bool(rref and reg.head_manifest(rref.repository, rref.reference))
        if not engine.exists(local):
            if in_registry and remote:
                log.info(f"base: pulling {remote}")
                engine.pull(remote, tls_verify=tls)
                engine.tag(remote, local)
            elif kind == "runtime" and remote is None:
                engine.pull(local, tls_verify=oci.tls_default(oci.Ref.parse(local).registry))
            elif kind == "runtime":
                make_runtime(engine, local)
            elif kind == "llvm":
                _build_from_template(engine, LLVM_TEMPLATE, local, b.runtime, llvm, tls)
            else:
                _build_from_template(engine, BUILD_TEMPLATE, local, b.llvm, llvm, tls)
        if push and remote and not in_registry:
            log.info(f"base: pushing {remote}")
            engine.push(local, remote, tls_verify=tls)
    return b


def ensure_local_toolchain(engine: ContainerEngine, b: Bases, llvm: int, *,
                           tls_verify: bool = True) -> None:
    """bakery's toolchain image, made on this node from Debian's packages (debootstrap, apt):
    what a host-side bake trusts, so it is never pulled from a registry by its tag."""
    if not engine.exists(b.runtime):
        make_runtime(engine, b.runtime)
    if not engine.exists(b.llvm):
        _build_from_template(engine, LLVM_TEMPLATE, b.llvm, b.runtime, llvm, tls_verify)


def ensure_foreign_runtime(engine: ContainerEngine, registry: str, arch: str, *,
                           tls_verify: bool | None = None) -> str:
    """The Debian runtime base for another architecture (debootstrap + qemu-user), local and in the registry."""
    local = f"localhost/bakery/debian:{SUITE}-{arch}"
    remote = f"{registry}/bakery/debian:{SUITE}-{arch}"
    tls = oci.tls_default(registry, tls_verify)
    reg = oci.Registry(registry, tls_verify=tls)
    in_registry = bool(reg.head_manifest("bakery/debian", f"{SUITE}-{arch}"))
    if not engine.exists(local):
        if in_registry:
            log.info(f"base: pulling {remote}")
            engine.pull(remote, tls_verify=tls)
            engine.tag(remote, local)
        else:
            if not Path(f"/proc/sys/fs/binfmt_misc/qemu-{ {'arm64': 'aarch64'}.get(arch, arch) }").exists():
                raise BakeryError(f"making the {arch} base needs qemu-user registered with binfmt_misc",
                                  "apt-get install qemu-user-static binfmt-support (scripts/setup.sh does it)")
            make_runtime(engine, local, arch=arch)
    if not in_registry:
        log.info(f"base: pushing {remote}")
        engine.push(local, remote, tls_verify=tls)
    return local
