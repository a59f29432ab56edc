"""Container engines behind one interface; buildah first.

Callers speak only :class:`ContainerEngine`. An engine is picked by name
(``--engine`` / ``BAKERY_ENGINE``; else buildah when it is installed, else docker
when a Docker socket answers); an unknown name is an error listing the known
ones. Credentials are never passed on argv: buildah reads the standard
containers auth file and the docker config itself.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from bakery import safefs
from bakery.errors import BakeryError

log = logging.getLogger(__name__)
Mount = tuple[str, str] | tuple[str, str, str]   # (host, container[, "ro"])
SANDBOX_USER = "65534:65534"                     # nobody: a bake needs no privilege in its container


class ContainerEngine(abc.ABC):
    name = "abstract"

    @abc.abstractmethod
    def build(self, *, containerfile: Path, context: Path, tag: str, build_args: Mapping[str, str] | None = None,
              tls_verify: bool = True, annotations: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
              log: Path | None = None, on_line: Callable[[str], None] | None = None) -> str:
        """Build a (multi-stage) Containerfile; returns the image id."""

    @abc.abstractmethod
    def import_rootfs(self, rootfs: Path, tag: str, *, env: Mapping[str, str], cmd: list[str],
                      labels: Mapping[str, str] | None = None, arch: str | None = None) -> str:
        """An image whose single layer is the directory tree ``rootfs``."""

    @abc.abstractmethod
    def export_dir(self, image: str, path: str, dest: Path, *, limits: safefs.Limits = safefs.Limits()) -> int:
        """Copy the folder ``path`` of the untrusted ``image`` to ``dest`` (which must not exist) as
        data: nothing runs in the image, regular files and folders only, no link followed on the way
        or inside (refused), within ``limits``. Returns the bytes copied."""

    @abc.abstractmethod
    def image_id(self, image: str) -> str:
        """The local image's immutable id: a bake pins its toolchain image by it."""

    # Multi-platform support: optional, so engines can add it later.

    def push_index(self, images: list[str], ref: str, *, tls_verify: bool = True) -> str:
        """Push ``images`` (one per platform) under one OCI image index at ``ref``; returns its digest."""
        raise BakeryError(f"the {self.name} engine cannot push multi-platform images yet",
                          "use --engine buildah for --platform with several platforms")

    @abc.abstractmethod
    def read_file(self, image: str, path: str) -> bytes:
        """The bytes of ``path`` inside ``image``."""

    @abc.abstractmethod
    def pull(self, ref: str, *, tls_verify: bool = True) -> str: ...

    @abc.abstractmethod
    def push(self, image: str, ref: str, *, tls_verify: bool = True) -> str:
        """Push and return the manifest digest. Blobs go first and the manifest
        last, so an interrupted push never leaves the tag."""

    @abc.abstractmethod
    def from_image(self, image: str, name: str | None = None) -> str:
        """A working container from ``image``; returns its name."""

    @abc.abstractmethod
    def containers(self) -> list[str]:
        """Names of the working containers."""

    @abc.abstractmethod
    def run(self, container: str, argv: list[str], *, volumes: Iterable[Mount] = (),
            env: Mapping[str, str] | None = None, log: Path | None = None,
            on_line: Callable[[str], None] | None = None, sandbox: bool = False,
            timeout: float | None = None) -> None:
        """Run ``argv`` in the working container. ``volumes`` are ``(host, container)`` or
        ``(host, container, "ro")``. ``sandbox``: the confinement of a host-side bake, which reads
        untrusted input: no network, no capabilities, no privilege gain, user ``nobody``, and the
        strongest isolation the engine has here (see docs/security.md). ``timeout``: the command is
        stopped after that many seconds (CommandFailed)."""

    @abc.abstractmethod
    def copy(self, container: str, src: Path, dest: str) -> None: ...

    @abc.abstractmethod
    def configure(self, container: str, *, entrypoint: list[str] | None = None, env: Mapping[str, str] | None = None,
                  labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None) -> None: ...

    @abc.abstractmethod
    def commit(self, container: str, image: str) -> str:
        """Commit the container's changes as one new layer; returns the image id."""

    def commit_push(self, container: str, ref: str, *, tls_verify: bool = True) -> str:
        """Commit the container as one new layer straight to ``ref`` in a registry; returns the
        manifest digest. Engines that can should not store the image locally on the way: a commit
        killed half-way must not leave a broken image in the node's store."""
        local = f"localhost/bakery-commit/{ref.rsplit('/', 1)[-1].replace(':', '-').replace('@', '-')}"
        self.commit(container, local)
        try:
            return self.push(local, ref, tls_verify=tls_verify)
        finally:
            self.remove_image(local)

    @abc.abstractmethod
    def remove(self, container: str) -> None: ...

    @abc.abstractmethod
    def inspect(self, image: str) -> dict: ...

    @abc.abstractmethod
    def exists(self, image: str) -> bool: ...

    @abc.abstractmethod
    def remove_image(self, image: str) -> None: ...

    @abc.abstractmethod
    def tag(self, image: str, name: str) -> None: ...
