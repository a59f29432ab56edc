"""The object cache: a module compiled once per (bitcode, flags, target, toolchain), reused by
every later bake that asks for the same (``bakery bake --cache DIR``, the launcher's cache).

When one source file of an app changes and the app is captured again, only that module's
bitcode digest changes: every other module's object is taken from here, and the bake is its
links.

* **Key**: sha256 over the toolchain's identity (``clang --version``, and the path, size and
  mtime of clang and of the LLVM libraries it loads), the module's bitcode digest, and the whole
  compile line after the input (module flags, preserved flags, target flags, LTO mode).
* **Entries**: ``<key[:2]>/<key>.o`` and ``<key>.json`` (the object's sha256 and size). Both
  are written under temporary names and renamed, the object first, so a reader that finds the
  record finds the whole object. Every hit is digest-checked; a bad entry is removed and the
  module compiled again.
* **Concurrent bakes** may make the same entry at once: both write the same bytes and the
  renames are atomic, so either one wins whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from bakery.capture.flags import sha256_file
from bakery.toolchain import Toolchain

KEY_VERSION = 1  # bump when what happens between the bitcode and the object changes


@functools.lru_cache(maxsize=8)
def toolchain_identity(clang: str) -> str:
    """What makes two compilers the same here: the version text, and the files that do the work."""
    from bakery import proc

    real = Path(clang).resolve()
    parts = [proc.run([clang, "--version"]).stdout]
    libdir = real.parent.parent / "lib"
    files = [real, *sorted(libdir.glob("libLLVM*.so*")), *sorted(libdir.glob("libclang-cpp.so*"))]
    for f in files:
        try:
            st = f.resolve().stat()
        except OSError:
            continue
        parts.append(f"{f.resolve()} {st.st_size} {st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class ObjectCache:
    def __init__(self, root: Path, toolchain: Toolchain):
        self.root = root / "objects"
        self.root.mkdir(parents=True, exist_ok=True)
        self.identity = toolchain_identity(toolchain.clang)
        self.hits = self.misses = 0

    def key(self, bitcode_sha256: str, argv: list[str]) -> str:
        from bakery import __version__  # the attribute rewrite before the compile is bakery's

        doc = json.dumps([KEY_VERSION, __version__, self.identity, bitcode_sha256, argv], separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.o", folder / f"{key}.json"

    def get(self, key: str, dest: Path) -> dict | None:
        """Copy the entry to ``dest`` when there is a whole one that matches its digest; returns its
        record (with what ``put`` was told about the object), else None."""
        obj, rec = self._paths(key)
        try:
            record = json.loads(rec.read_text())
            want = record["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            self.misses += 1
            return None
        tmp = dest.with_name(dest.name + ".cached")
        try:
            shutil.copyfile(obj, tmp)
        except OSError:
            self.misses += 1
            return None
        if sha256_file(str(tmp)) != want:
            tmp.unlink()
            for p in (rec, obj):
                p.unlink(missing_ok=True)
            self.misses += 1
            return None
        os.replace(tmp, dest)
        self.hits += 1
        return record if isinstance(record, dict) else None

    def put(self, key: str, obj_file: Path, **about: bool) -> None:
        """Keep ``obj_file`` under ``key``; ``about``: what the bake knows of it (``plain``: no asm,
        no -m feature flags), given back by ``get``."""
        obj, rec = self._paths(key)
        obj.parent.mkdir(exist_ok=True)
        suffix = f".{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            tmp_obj = obj.with_name(obj.name + suffix)
            shutil.copyfile(obj_file, tmp_obj)
            os.replace(tmp_obj, obj)
            tmp_rec = rec.with_name(rec.name + suffix)
            tmp_rec.write_text(json.dumps({"sha256": sha256_file(str(obj)), "size": obj.stat().st_size, **about}))
            os.replace(tmp_rec, rec)
        except OSError:
            pass  # a full or read-only cache costs a compile next time, never the bake
