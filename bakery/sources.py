"""Fetch a recipe's sources into the work tree: local paths, checked tarballs, pinned git commits."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from . import proc
from .errors import BakeryError

IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.o", "*.a", "*.so", ".bakery-*")


def fetch_all(sources, root: Path, cache: Path | None = None) -> None:
    for src in sources:
        dest = (root / src.dest).resolve()
        if dest != root.resolve() and root.resolve() not in dest.parents:
            raise BakeryError(f"source dest {src.dest!r} leaves the work tree")
        dest.mkdir(parents=True, exist_ok=True)
        {"path": _copy_path, "url": _fetch_url, "git": _fetch_git}[src.kind](src, dest, cache)


def _copy_path(src, dest: Path, cache) -> None:
    location = Path(src.location)
    if location.is_dir():
        shutil.copytree(location, dest, symlinks=True, ignore=IGNORE, dirs_exist_ok=True)
    else:
        shutil.copy2(location, dest / location.name)


def _fetch_url(src, dest: Path, cache: Path | None) -> None:
    want = src.sha256.lower()
    cached = cache / "sources" / want if cache else None
    if cached and cached.exists():
        archive = cached
    else:
        tmpdir = Path(tempfile.mkdtemp(prefix="bakery-src-"))
        archive = tmpdir / "download"
        try:
            with urllib.request.urlopen(src.location, timeout=60) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise BakeryError(f"cannot download {src.location}: {e}") from None
        got = hashlib.sha256(archive.read_bytes()).hexdigest()
        if got != want:
            raise BakeryError(f"sha256 mismatch for {src.location}", f"expected {want}, got {got}")
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, cached)
    _extract(archive, dest, src.strip_components, src.location)


def _extract(archive: Path, dest: Path, strip: int, name: str) -> None:
    if zipfile.is_zipfile(archive):
        raise BakeryError(f"{name}: zip archives are not supported yet", "use a .tar.gz/.tar.xz source")
    try:
        with tarfile.open(archive) as tf:
            members = []
            for m in tf.getmembers():
                parts = Path(m.name).parts[strip:]
                if not parts:
                    continue
                m.name = str(Path(*parts))
                members.append(m)
            tf.extractall(dest, members=members, filter="data")
    except tarfile.TarError as e:
        raise BakeryError(f"{name}: not a readable tar archive ({e})") from None


def _fetch_git(src, dest: Path, cache) -> None:
    git = proc.which("git")
    proc.run([git, "init", "-q", str(dest)])
    proc.run([git, "-C", str(dest), "fetch", "-q", "--depth", "1", src.location, src.commit])
    proc.run([git, "-C", str(dest), "checkout", "-q", "FETCH_HEAD"])
    head = proc.run([git, "-C", str(dest), "rev-parse", "HEAD"]).stdout.strip()
    if head != src.commit:
        raise BakeryError(f"{src.location}: checked out {head}, recipe pins {src.commit}")
