"""The launcher's cache: one folder per (plan digest, target), made once, checked at every use.

Layout under the cache root (``/var/cache/bakery``, a volume, or a fallback)::

    v1/<app>-<version>-<plan12>-<target>/        a complete entry
        entry.json                              {"plan", "target", "files": {name: sha256}, "source", ...}
        <the plan's outputs>
    v1/<key>.lock                               held (POSIX lock) while the entry is made
    v1/.tmp-<key>-<pid>-<random>/               an entry being made; renamed into place when whole

Rules, each for a fault users meet:

* **one maker**: the entry is made under the lock; a container that finds the lock held
  waits and then takes the finished entry (N containers on one volume: one bake);
* **no half entry**: it is written under a temporary name and renamed, so a container
  killed mid-bake leaves only a temporary folder, which the next maker removes;
* **checked at every use**: every file's sha256 against ``entry.json``, each a regular
  file (never a symlink); an entry that fails is moved aside and made again.

The cache is as trusted as the image: whoever can write it chooses what runs, as with any
volume mounted into a container. The checks catch corruption, truncation and stray edits.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bakery.capture import flags

LAYOUT = "v1"
ENTRY_FILE = "entry.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


class EntryInvalid(Exception):
    """An entry that exists and fails its check (the reason is the message)."""


def sha256_file(path: Path | int) -> str:
    """``sha256:<hex>`` of a file, by path or of an open descriptor."""
    return "sha256:" + flags.sha256_file(path if isinstance(path, int) else str(path))


_CPU_FIELDS = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags", "Features",
               "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "isa", "uarch")


def host_key(*parts: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """A digest of what names this CPU (the first processor's identity and flags, not its clock)
    and of ``parts`` (the target asked for, the toolchain that clamps it)."""
    h = hashlib.sha256("\0".join(parts).encode())
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough: a node's CPUs are one type
                if line.split(":", 1)[0].strip() in _CPU_FIELDS:
                    h.update(line.encode())
    except OSError:
        h.update(b"no cpuinfo")
    return h.hexdigest()[:32]


def entry_key(app: str, version: str, plan_digest: str, target: str) -> str:
    hex12 = plan_digest.split(":", 1)[-1][:12]
    return _UNSAFE.sub("_", f"{app}-{version}-{hex12}-{target}")[:200]


@dataclass(frozen=True)
class Root:
    path: Path
    private: bool        # a fallback folder of this container alone
    note: str = ""       # why the fallback was taken ("" when the folder was usable)


def writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def choose_root(wanted: Path, *, home_fallback: Path | None = None) -> Root:
    """``wanted`` when it is (or can be made) a writable folder; else ``home_fallback`` (Apptainer's
    $HOME); else a private temporary folder, with the note that says why."""
    if writable(wanted):
        return Root(wanted, private=False)
    why = f"{wanted} is {'read-only' if wanted.is_dir() else 'missing and cannot be made'}"
    if home_fallback is not None and writable(home_fallback):
        return Root(home_fallback, private=False, note=f"{why}: caching in {home_fallback}")
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bakery-cache-"))
    return Root(tmp, private=True,
                note=f"{why}: baking into the private folder {tmp} (mount a volume at {wanted} to keep bakes)")


class Cache:
    def __init__(self, root: Path):
        self.dir = root / LAYOUT
        self.dir.mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Path:
        return self.dir / key

    # -- reading -------------------------------------------------------------------------------

    def check(self, key: str, plan_digest: str, target: str) -> dict | None:
        """The entry's record when it is whole and every file matches; None when there is none.
        Raises EntryInvalid when it exists and fails."""
        entry = self.entry(key)
        try:
            raw = (entry / ENTRY_FILE).read_bytes()
        except FileNotFoundError:
            if entry.exists() or entry.is_symlink():
                raise EntryInvalid(f"{ENTRY_FILE} is missing") from None
            return None
        except OSError as e:
            raise EntryInvalid(f"{ENTRY_FILE} cannot be read ({e.strerror})") from None
        try:
            record = json.loads(raw)
            files = record["files"]
            ok = record["plan"] == plan_digest and record["target"] == target and isinstance(files, dict)
        except (ValueError, KeyError, TypeError):
            raise EntryInvalid(f"{ENTRY_FILE} is not an entry record") from None
        if not ok:
            raise EntryInvalid(f"{ENTRY_FILE} is for another plan or target")
        if entry.is_symlink() or set(os.listdir(entry)) != {*files, ENTRY_FILE}:
            raise EntryInvalid("its files are not the ones recorded")
        for name, digest in files.items():
            fd = os.open(entry / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise EntryInvalid(f"{name} is not a regular file")
                if sha256_file(fd) != digest:
                    raise EntryInvalid(f"{name} does not match its digest")
            finally:
                os.close(fd)
        return record

    def drop(self, key: str) -> None:
        """Move a failed entry aside (atomic), then remove it."""
        import secrets
        import shutil

        aside = self.dir / f".bad-{key}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(self.entry(key), aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    # -- the node's target, remembered --------------------------------------------------------------

    def remembered_target(self, key: str) -> str | None:
        """The target detected before on this CPU (``key``: see :func:`host_key`), or None."""
        try:
            name = (self.dir / "targets" / key).read_text().strip()
        except OSError:
            return None
        return name if _UNSAFE.sub("", name) == name and name else None

    def remember_target(self, key: str, name: str) -> None:
        folder = self.dir / "targets"
        try:
            folder.mkdir(exist_ok=True)
            tmp = folder / f".{key}.{os.getpid()}"
            tmp.write_text(name + "\n")
            os.rename(tmp, folder / key)
        except OSError:
            pass  # remembering is an optimization only

    # -- making ----------------------------------------------------------------------------------

    @contextmanager
    def locked(self, key: str, on_wait: Callable[[], None] | None = None, wait_note_after: float = 5.0) -> Iterator[None]:
        """Hold the entry's lock (a POSIX record lock: also across NFS and containers sharing
        the volume). ``on_wait`` is called once when another holder keeps it longer than
        ``wait_note_after`` seconds."""
        fd = os.open(self.dir / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        try:
            t0, told = time.monotonic(), False
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                if not told and on_wait is not None and time.monotonic() - t0 > wait_note_after:
                    told = True
                    on_wait()
                time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # releases the lock

    def clean(self, key: str) -> None:
        """Remove what makers of ``key`` killed mid-way left (``.tmp-<key>-*``). Call under
        :meth:`locked`: only the lock's holder writes these."""
        import shutil

        for stale in self.dir.glob(f".tmp-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def workdir(self, key: str, what: str):
        """A temporary folder for making ``key`` (a fetch, a bake), removed on exit."""
        import tempfile

        return tempfile.TemporaryDirectory(prefix=f".tmp-{key}-{what}-", dir=self.dir)

    def install(self, key: str, files: dict[str, Path], record: dict) -> dict:
        """Copy ``files`` (name -> path) into a new entry, write its record, rename it into place.
        Call under :meth:`locked`. Returns the record written."""
        import secrets
        import shutil

        tmp = self.dir / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            digests = {}
            for name, src in sorted(files.items()):
                if not name or "/" in name or name in (".", "..", ENTRY_FILE):
                    raise EntryInvalid(f"output name {name!r} is not a plain file name")
                dest = tmp / name
                shutil.copyfile(src, dest, follow_symlinks=False)
                dest.chmod(0o755)
                digests[name] = sha256_file(dest)
            record = {**record, "files": digests, "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            for path in (*tmp.iterdir(), tmp):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            tmp.chmod(0o755)
            self.drop(key)  # a failed one, checked and refused by the caller
            os.rename(tmp, self.entry(key))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return record
