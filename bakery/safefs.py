"""Reading untrusted trees as data: regular files and folders only, never a link followed.

An IR image is untrusted: its bundle folder, or any folder on the way to it, may
be a symlink that resolves on the host (``/bakery/bundle -> /root``), hold a
symlink to a host file, a device, or a million files. Everything here walks
with ``openat``-style calls (``dir_fd`` + ``O_NOFOLLOW``) from a root the caller
trusts, so no component is ever resolved through a link, and it counts what it
copies against :class:`Limits`. The bake's outputs are read the same way before
they are committed (:func:`stage_outputs`): only the names the plan installs,
each a regular file by ``fstat`` of the opened file.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any  # a tar stream: a file, a GzipFile, the Docker SDK's chunks

from bakery.errors import PlanRefused

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO never hangs us
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What an exported tree may hold (a real LAMMPS bundle: ~1,500 files, ~60 MB)."""

    max_bytes: int = 8 << 30
    max_files: int = 200_000
    max_depth: int = 16


class _Budget:
    def __init__(self, limits: Limits, what: str):
        self.limits, self.what = limits, what
        self.bytes = self.files = 0

    def file(self, size: int, rel: str) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.limits.max_files:
            raise PlanRefused(f"{self.what}: more than {self.limits.max_files} files")
        if self.bytes > self.limits.max_bytes:
            raise PlanRefused(f"{self.what}: more than {self.limits.max_bytes >> 20} MiB (at {rel})")


def _open_dir(name: str, dir_fd: int | None, rel: str, what: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PlanRefused(f"{what}: {rel} is a symlink or not a folder: refused") from None
        if e.errno == errno.ENOENT:
            raise PlanRefused(f"{what}: {rel} not found") from None
        raise


def _copy_fd(src: int, dest_dir: int, name: str, mode: int, size_left: int, rel: str, what: str) -> int:
    out = os.open(name, _NEW_FILE, mode, dir_fd=dest_dir)
    n = 0
    try:
        while data := os.read(src, CHUNK):
            n += len(data)
            if n > size_left:
                raise PlanRefused(f"{what}: {rel} is larger than what is left of the size limit")
            os.write(out, data)
    finally:
        os.close(out)
    return n


def copy_tree(root: Path, rel: str, dest: Path, *, limits: Limits = Limits(), what: str = "the IR image") -> int:
    """Copy the folder ``rel`` below the trusted folder ``root`` (an image's mount) to ``dest``,
    which must not exist. Refuses symlinks anywhere (``rel``'s own components included),
    devices, FIFOs and sockets, and trees beyond ``limits``. Returns the bytes copied."""
    parts = PurePosixPath(rel.lstrip("/")).parts
    if ".." in parts:
        raise PlanRefused(f"{what}: {rel} leaves the image's root")
    budget = _Budget(limits, what)
    fd = os.open(root, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            nxt = _open_dir(part, fd, "/" + "/".join(parts[: i + 1]), what)
            os.close(fd)
            fd = nxt
        dest.mkdir(parents=False)
        out = os.open(dest, _DIR_FLAGS)
        try:
            _copy_dir(fd, out, "/" + "/".join(parts), budget, 0)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    return budget.bytes


def _copy_dir(src: int, dest: int, rel: str, budget: _Budget, depth: int) -> None:
    what = budget.what
    if depth > budget.limits.max_depth:
        raise PlanRefused(f"{what}: {rel} is nested deeper than {budget.limits.max_depth} folders")
    with os.scandir(src) as it:
        entries = sorted(e.name for e in it)
    for name in entries:
        sub = f"{rel}/{name}"
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            s = _open_dir(name, src, sub, what)
            try:
                os.mkdir(name, 0o755, dir_fd=dest)
                d = os.open(name, _DIR_FLAGS, dir_fd=dest)
                try:
                    _copy_dir(s, d, sub, budget, depth + 1)
                finally:
                    os.close(d)
            finally:
                os.close(s)
        elif stat.S_ISREG(st.st_mode):
            budget.file(st.st_size, sub)
            try:
                f = os.open(name, _FILE_FLAGS, dir_fd=src)
            except OSError as e:
                if e.errno == errno.ELOOP:  # swapped for a link since the stat
                    raise PlanRefused(f"{what}: {sub} is a symlink: refused") from None
                raise
            try:
                if not stat.S_ISREG(os.fstat(f).st_mode):
                    raise PlanRefused(f"{what}: {sub} is not a regular file: refused")
                _copy_fd(f, dest, name, 0o644, budget.limits.max_bytes - budget.bytes + st.st_size, sub, what)
            finally:
                os.close(f)
        elif stat.S_ISLNK(st.st_mode):
            raise PlanRefused(f"{what}: {sub} is a symlink: refused (a bundle holds regular files only)")
        else:
            raise PlanRefused(f"{what}: {sub} is a device, FIFO or socket: refused")


def extract_tar(fileobj: Any, dest: Path, *, strip: str = "", others: str = "refuse",
                limits: Limits = Limits(), what: str = "the IR image") -> int | None:
    """Extract a tar stream to ``dest``, which must not exist: regular files and folders only,
    the members below the folder ``strip`` (a relative path such as ``bundle`` or
    ``bakery/bundle``, removed from their names). Members elsewhere are refused
    (``others="refuse"``: Docker's archive of one folder) or passed over (``"skip"``: an image
    layer). Returns the bytes written, or None when nothing of the archive lay below ``strip``."""
    budget = _Budget(limits, what)
    top = PurePosixPath(strip) if strip else None
    found = False
    dest.mkdir(parents=False)
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r|*")
    except tarfile.TarError as e:
        raise PlanRefused(f"{what}: not a readable tar archive ({e})") from None
    with tf:
        for m in tf:
            p = PurePosixPath(m.name.removeprefix("./"))
            if p.is_absolute() or ".." in p.parts or "\0" in m.name:
                raise PlanRefused(f"{what}: archive member {m.name[:200]!r} leaves the folder: refused")
            if top is not None:
                if p != top and top not in p.parents:
                    if others == "skip":
                        continue
                    raise PlanRefused(f"{what}: archive member {m.name[:200]!r} is outside {strip}: refused")
                p = p.relative_to(top)
            found = True
            if len(p.parts) > limits.max_depth:
                raise PlanRefused(f"{what}: {m.name[:200]} is nested deeper than {limits.max_depth} folders")
            if p.name.startswith(".wh."):
                raise PlanRefused(f"{what}: {m.name[:200]} is a whiteout (a deleted file): refused")
            if m.isdir():
                if str(p) != ".":
                    os.close(_mkdirs_nofollow(dest, p.parts, what))
                continue
            if not m.isreg():
                kind = "a symlink" if m.issym() else "a hard link" if m.islnk() else "not a regular file"
                raise PlanRefused(f"{what}: {m.name[:200]} is {kind}: refused (a bundle holds regular files only)")
            if str(p) == ".":
                raise PlanRefused(f"{what}: {strip} is a file, not a folder")
            budget.file(m.size, m.name)
            parent = _mkdirs_nofollow(dest, p.parts[:-1], what)
            try:
                src = tf.extractfile(m)
                assert src is not None
                out = os.open(p.parts[-1], _NEW_FILE, 0o644, dir_fd=parent)
                try:
                    while data := src.read(CHUNK):
                        os.write(out, data)
                finally:
                    os.close(out)
            except FileExistsError:
                raise PlanRefused(f"{what}: {m.name[:200]} appears twice in the archive") from None
            finally:
                os.close(parent)
    return budget.bytes if found or top is None else None


def _mkdirs_nofollow(dest: Path, parts: tuple[str, ...], what: str) -> int:
    """An fd of dest/parts..., made as needed, never through a link."""
    fd = os.open(dest, _DIR_FLAGS)
    for part in parts:
        try:
            os.mkdir(part, 0o755, dir_fd=fd)
        except FileExistsError:
            pass
        nxt = _open_dir(part, fd, part, what)
        os.close(fd)
        fd = nxt
    return fd


def stage_outputs(outdir: Path, names: list[str], dest: Path) -> list[Path]:
    """Copy exactly ``names`` (the plan's install names) from ``outdir`` to the fresh folder
    ``dest``: each must be a regular file by ``fstat`` of the file opened without following
    links. Anything else in ``outdir`` is left behind; a missing name, a symlink, a folder or
    a device is refused. Returns the staged files, mode 0755."""
    dest.mkdir(parents=False)
    staged = []
    src_dir = os.open(outdir, _DIR_FLAGS)
    dest_dir = os.open(dest, _DIR_FLAGS)
    try:
        for name in names:
            if not name or "/" in name or name in (".", "..") or "\0" in name:
                raise PlanRefused(f"output name {name!r} is not a plain file name")
            try:
                f = os.open(name, _FILE_FLAGS, dir_fd=src_dir)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise PlanRefused(f"the bake's output {name} is a symlink: refused") from None
                if e.errno == errno.ENOENT:
                    raise PlanRefused(f"the bake did not write its output {name}") from None
                raise
            try:
                if not stat.S_ISREG(os.fstat(f).st_mode):
                    raise PlanRefused(f"the bake's output {name} is not a regular file: refused")
                _copy_fd(f, dest_dir, name, 0o755, 1 << 40, name, "the bake's outputs")
                os.chmod(name, 0o755, dir_fd=dest_dir)  # the umask does not decide an executable's mode
            finally:
                os.close(f)
            staged.append(dest / name)
    finally:
        os.close(src_dir)
        os.close(dest_dir)
    return staged
