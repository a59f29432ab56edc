"""Fetch a recipe's sources into the work tree: local paths, checked tarballs,
pinned git commits and Debian source packages."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from bakery import proc
from bakery.errors import BakeryError

IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.o", "*.a", "*.so", ".bakery-*")


def inputs_digest(recipe) -> str:
    """What an IR image is built from: the recipe file and the trees of its local ``path`` sources.

    url, git and debian sources are pinned by the recipe itself (sha256, commit, version), but a
    local tree can change under an unchanged recipe: reuse of an IR image is keyed on this."""
    h = hashlib.sha256(recipe.digest.encode())
    for src in recipe.sources:
        if src.kind == "path":
            h.update(f"\0path\0{src.dest}\0".encode())
            _hash_tree(Path(src.location), h)
    return "sha256:" + h.hexdigest()


def _hash_tree(root: Path, h) -> None:
    if not root.is_dir():
        h.update(b"file\0" + _file_digest(root))
        return
    for dirpath, dirnames, filenames in os.walk(root):
        ignored = IGNORE(dirpath, dirnames + filenames)
        dirnames[:] = sorted(d for d in dirnames if d not in ignored)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if name in ignored:
                continue
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                h.update(f"link\0{rel}\0{os.readlink(path)}\0".encode())
            else:
                h.update(f"file\0{rel}\0{path.stat().st_mode & 0o111:o}\0".encode() + _file_digest(path))


def _file_digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def fetch_all(sources, root: Path, cache: Path | None = None) -> None:
    for src in sources:
        dest = (root / src.dest).resolve()
        if dest != root.resolve() and root.resolve() not in dest.parents:
            raise BakeryError(f"source dest {src.dest!r} leaves the work tree")
        dest.mkdir(parents=True, exist_ok=True)
        fetch = {"path": _copy_path, "url": _fetch_url, "git": _fetch_git, "debian": _fetch_debian}[src.kind]
        fetch(src, dest, cache)


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


# --- Debian source packages ---------------------------------------------------

DEB_SRC_HINT = ("add a deb-src entry, e.g. a file in /etc/apt/sources.list.d/ with 'Types: deb-src' and the "
                "same URIs/Suites/Components as your 'Types: deb' entry, then run 'apt-get update' "
                "(bakery does not run it for you)")


def debian_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bakery/debian``, or ``~/.cache/bakery/debian``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bakery" / "debian"


def _fetch_debian(src, dest: Path, cache) -> None:
    """``apt-get source --download-only NAME=VERSION`` (apt checks the signed index's
    hashes), then ``dpkg-source -x``, which applies Debian's patches, as Debian builds it."""
    dpkg_source = proc.which("dpkg-source", hint="install it with: apt-get install dpkg-dev")
    pkgdir = debian_download(src.location, src.version)
    dscs = sorted(pkgdir.glob("*.dsc"))
    if len(dscs) != 1:
        raise BakeryError(f"debian source {src.location}={src.version}: expected one .dsc in {pkgdir}, "
                          f"found {len(dscs)}", f"remove {pkgdir} to download it again")
    tmp = Path(tempfile.mkdtemp(prefix="bakery-deb-"))
    try:
        tree = tmp / "tree"
        cp = proc.run([dpkg_source, "-x", dscs[0].name, str(tree)], cwd=pkgdir, check=False,
                      env=proc.env_with({"LC_ALL": "C"}))
        if cp.returncode != 0 or not tree.is_dir():
            tail = "\n".join(((cp.stdout or "") + (cp.stderr or "")).strip().splitlines()[-5:])
            raise BakeryError(f"dpkg-source could not unpack {dscs[0].name}: {tail}",
                              f"remove {pkgdir} to download it again")
        shutil.copytree(tree, dest, symlinks=True, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def debian_download(name: str, version: str) -> Path:
    """The directory holding the package's .dsc and tarballs, downloaded once per version."""
    apt_get = proc.which("apt-get", hint="Debian source packages are fetched with apt (Debian or Ubuntu hosts)")
    root = debian_cache_dir()
    final = root / f"{name}_{version.replace(':', '%3a')}"
    if final.is_dir():  # complete: only renamed into place after apt-get succeeded
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        cp = proc.run([apt_get, "source", "--download-only", "-q", f"{name}={version}"], cwd=tmp, check=False,
                      env=proc.env_with({"LC_ALL": "C", "LANGUAGE": "C"}))
        if cp.returncode != 0:
            raise _apt_error(name, version, (cp.stdout or "") + (cp.stderr or ""))
        if not any(tmp.glob("*.dsc")):
            raise BakeryError(f"apt-get source {name}={version} downloaded no .dsc file")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # else another capture finished first: use its copy
                raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _apt_error(name: str, version: str, output: str) -> BakeryError:
    errors = [l for l in output.splitlines() if l.startswith("E:")] or output.strip().splitlines()[-3:]
    what = f"apt-get source {name}={version} failed: " + " / ".join(e.removeprefix("E: ") for e in errors)
    if "deb-src" in output:
        return BakeryError(what, DEB_SRC_HINT)
    if "Unable to find a source package" in output or "Can not find version" in output:
        return BakeryError(what, f"check the name and version with: apt-cache showsrc {name} | grep ^Version; "
                                 "the package lists may be stale (run 'apt-get update': bakery does not), "
                                 "or no deb-src entry covers this release (Types: deb-src in /etc/apt/sources.list.d/)")
    return BakeryError(what, "check the network and the apt sources; 'apt-get update' may be needed")
