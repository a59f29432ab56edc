"""buildah, as root: builds with chroot isolation, host-side bakes with oci isolation (runc)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bakery import proc, safefs
from bakery.config import Settings
from bakery.engines.base import SANDBOX_USER, ContainerEngine
from bakery.errors import BakeryError

log = logging.getLogger(__name__)


def _pairs(flag: str, values: Mapping[str, str] | None) -> list[str]:
    """``--flag k=v`` for each item, as buildah takes build args, labels, annotations and env."""
    return [a for k, v in (values or {}).items() for a in (flag, f"{k}={v}")]


class BuildahEngine(ContainerEngine):
    """buildah, as root with chroot isolation (no daemon, no user namespaces needed)."""

    name = "buildah"

    def __init__(self, isolation: str | None = None):
        self.exe = proc.which("buildah")
        self.isolation = isolation or Settings.from_env().build_isolation

    def _b(self, *args: str) -> list[str]:
        return [self.exe, *args]

    def build(self, *, containerfile, context, tag, build_args=None, tls_verify=True, annotations=None,
              labels=None, log=None, on_line=None) -> str:
        with tempfile.NamedTemporaryFile(prefix="bakery-iid-", delete=False) as f:
            iidfile = f.name
        argv = self._b("build", f"--isolation={self.isolation}", "--layers", "-f", str(containerfile),
                       "-t", tag, "--iidfile", iidfile, f"--tls-verify={str(tls_verify).lower()}")
        argv += [*_pairs("--build-arg", build_args), *_pairs("--annotation", annotations), *_pairs("--label", labels)]
        argv.append(str(context))
        try:
            proc.stream(argv, log=log, on_line=on_line)
            return Path(iidfile).read_text().strip()
        finally:
            os.unlink(iidfile)

    def import_rootfs(self, rootfs, tag, *, env, cmd, labels=None, arch=None) -> str:
        ctr = proc.run(self._b("from", "scratch")).stdout.strip()
        try:
            mnt = proc.run(self._b("mount", ctr)).stdout.strip()
            try:
                proc.run(["cp", "-a", f"{rootfs}/.", mnt])
            finally:
                proc.run(self._b("umount", ctr))
            self.configure(ctr, env=env, labels=labels)
            proc.run(self._b("config", "--cmd", json.dumps(cmd), "--os", "linux",
                             *(["--arch", arch] if arch else []), ctr))
            return self.commit(ctr, tag)
        finally:
            self.remove(ctr)

    def read_file(self, image, path) -> bytes:
        # Through a mount, not `run cat`: works for any platform's image, runs nothing.
        ctr = self.from_image(image)
        try:
            mnt = Path(proc.run(self._b("mount", ctr)).stdout.strip())
            try:
                target = (mnt / path.lstrip("/")).resolve()
                if mnt.resolve() not in target.parents:
                    raise BakeryError(f"{path} leaves the image's root")
                return target.read_bytes()
            except FileNotFoundError:
                raise BakeryError(f"{path} not found in {image}") from None
            finally:
                proc.run(self._b("umount", ctr), check=False)
        finally:
            self.remove(ctr)

    def export_dir(self, image, path, dest, *, limits=safefs.Limits()) -> int:
        ctr = self.from_image(image)
        try:
            mnt = Path(proc.run(self._b("mount", ctr)).stdout.strip())
            try:
                return safefs.copy_tree(mnt, path, dest, limits=limits)
            finally:
                proc.run(self._b("umount", ctr), check=False)
        finally:
            self.remove(ctr)

    def image_id(self, image) -> str:
        out = proc.run(self._b("inspect", "--type", "image", "--format", "{{.FromImageID}}", image),
                       check=False)
        if out.returncode != 0 or not out.stdout.strip():
            raise BakeryError(f"image {image} not found in the local store")
        return out.stdout.strip()

    def push_index(self, images, ref, *, tls_verify=True) -> str:
        import uuid

        name = f"localhost/bakery-index-{uuid.uuid4().hex[:12]}"
        proc.run(self._b("manifest", "create", name))
        try:
            for image in images:
                proc.run(self._b("manifest", "add", name, f"containers-storage:{image}"))
            with tempfile.NamedTemporaryFile(prefix="bakery-digest-", delete=False) as f:
                digestfile = f.name
            try:
                proc.run(self._b("manifest", "push", "--all", "--format", "oci",
                                 f"--tls-verify={str(tls_verify).lower()}", "--digestfile", digestfile,
                                 name, f"docker://{ref}"))
                return Path(digestfile).read_text().strip()
            finally:
                os.unlink(digestfile)
        finally:
            proc.run(self._b("manifest", "rm", name), check=False)

    def pull(self, ref, *, tls_verify=True) -> str:
        return proc.run(self._b("pull", "-q", f"--tls-verify={str(tls_verify).lower()}", f"docker://{ref}")).stdout.strip()

    def push(self, image, ref, *, tls_verify=True) -> str:
        with tempfile.NamedTemporaryFile(prefix="bakery-digest-", delete=False) as f:
            digestfile = f.name
        try:
            proc.run(self._b("push", "-q", f"--tls-verify={str(tls_verify).lower()}", "--digestfile", digestfile,
                             image, f"docker://{ref}"))
            return Path(digestfile).read_text().strip()
        finally:
            os.unlink(digestfile)

    def from_image(self, image, name=None) -> str:
        extra = ["--name", name] if name else []
        return proc.run(self._b("from", "-q", "--pull-never", *extra, image)).stdout.strip()

    def containers(self) -> list[str]:
        out = proc.run(self._b("containers", "--format", "{{.ContainerName}}")).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    @functools.cached_property
    def sandbox_isolation(self) -> str:
        """oci (runc: namespaces, seccomp, no network) when an OCI runtime is installed; chroot
        isolation cannot drop the network and, as root, a process can leave a chroot."""
        chosen = Settings.from_env().bake_isolation or ("oci" if shutil.which("runc") or shutil.which("crun")
                                                         else "chroot")
        if chosen == "chroot":
            log.warning("bake: no OCI runtime (runc, crun): the bake container gets chroot isolation, with the "
                        "host's network (install runc for namespaces, seccomp and no network)")
        return chosen

    def run(self, container, argv, *, volumes=(), env=None, log=None, on_line=None, sandbox=False,
            timeout=None) -> None:
        if sandbox:
            iso = self.sandbox_isolation
            cmd = self._b("run", f"--isolation={iso}", "--cap-drop=all", "--user", SANDBOX_USER,
                          *(["--network=none"] if iso == "oci" else []))
        else:
            cmd = self._b("run", f"--isolation={self.isolation}")
        for v in volumes:
            cmd += ["-v", ":".join(v)]
        for k, v in (env or {}).items():
            cmd += ["--env", f"{k}={v}"]
        proc.stream([*cmd, container, "--", *argv], log=log, on_line=on_line, timeout=timeout)

    def copy(self, container, src, dest) -> None:
        proc.run(self._b("copy", container, str(src), dest))

    def configure(self, container, *, entrypoint=None, env=None, labels=None, annotations=None) -> None:
        argv = self._b("config")
        if entrypoint is not None:
            # The base's CMD would become the entrypoint's arguments: clear it.
            argv += ["--entrypoint", json.dumps(entrypoint), "--cmd", ""]
        argv += [*_pairs("--env", env), *_pairs("--label", labels), *_pairs("--annotation", annotations)]
        if len(argv) > 2:
            proc.run([*argv, container])

    def commit(self, container, image) -> str:
        return proc.run(self._b("commit", "-q", "--format", "oci", container, image)).stdout.strip()

    def commit_push(self, container, ref, *, tls_verify=True) -> str:
        # Straight to the registry: nothing is written to the local image store, so a kill during the
        # commit cannot leave an image without its manifest there (that breaks 'buildah images' for
        # everyone), and the tag appears only when the manifest, pushed last, is complete.
        proc.run(self._b("commit", "-q", "--format", "oci", f"--tls-verify={str(tls_verify).lower()}",
                         container, f"docker://{ref}"))
        return self._registry_digest(ref, tls_verify)

    def _registry_digest(self, ref: str, tls_verify: bool) -> str:
        # buildah commit has no --digestfile: ask the registry what the tag now names.
        cp = proc.run(["skopeo", "inspect", "--raw", f"--tls-verify={str(tls_verify).lower()}", f"docker://{ref}"],
                      text=False)
        return "sha256:" + hashlib.sha256(cp.stdout).hexdigest()

    def remove(self, container) -> None:
        proc.run(self._b("rm", container), check=False)

    def inspect(self, image) -> dict:
        return json.loads(proc.run(self._b("inspect", "--type", "image", image)).stdout)

    def exists(self, image) -> bool:
        return proc.run(self._b("inspect", "--type", "image", image), check=False).returncode == 0

    def remove_image(self, image) -> None:
        proc.run(self._b("rmi", "-f", image), check=False)

    def tag(self, image, name) -> None:
        proc.run(self._b("tag", image, name))
