"""The launcher's cache: entries made once under a lock, renamed into place whole, checked at
every use. Real processes, real POSIX locks, real kills."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from bakery.launch.cache import ENTRY_FILE, Cache, EntryInvalid, choose_root, entry_key

PLAN = "sha256:" + "ab" * 32
KEY = entry_key("app", "1.0", PLAN, "zen4")


def _outputs(tmp: Path, text: str = "binary") -> dict[str, Path]:
    src = tmp / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "app").write_text(text)
    (src / "libapp.so.1").write_text(text + " library")
    return {"app": src / "app", "libapp.so.1": src / "libapp.so.1"}


def _record() -> dict:
    return {"app": "app", "version": "1.0", "plan": PLAN, "target": "zen4", "source": "bake"}


def test_an_entry_is_found_only_when_whole_and_matching(tmp_path):
    cache = Cache(tmp_path / "cache")
    assert cache.check(KEY, PLAN, "zen4") is None
    with cache.locked(KEY):
        cache.install(KEY, _outputs(tmp_path), _record())
    record = cache.check(KEY, PLAN, "zen4")
    assert record and set(record["files"]) == {"app", "libapp.so.1"}
    assert (cache.entry(KEY) / "app").read_text() == "binary"
    assert os.access(cache.entry(KEY) / "app", os.X_OK)
    with pytest.raises(EntryInvalid, match="another plan or target"):
        cache.check(KEY, PLAN, "x86_64_v3")
    assert not list(cache.dir.glob(".tmp-*"))


@pytest.mark.parametrize("tamper, why", [
    (lambda e: (e / "app").write_text("changed"), "does not match its digest"),
    (lambda e: (e / "extra").write_text("x"), "not the ones recorded"),
    (lambda e: (e / "libapp.so.1").unlink(), "not the ones recorded"),
    (lambda e: ((e / "app").unlink(), (e / "app").symlink_to("/bin/sh")), "not a regular file|Too many levels|symbolic"),
    (lambda e: (e / ENTRY_FILE).write_text("{"), "not an entry record"),
    (lambda e: (e / ENTRY_FILE).unlink(), "missing"),
])
def test_a_tampered_entry_is_refused_and_dropped(tmp_path, tamper, why):
    cache = Cache(tmp_path / "cache")
    with cache.locked(KEY):
        cache.install(KEY, _outputs(tmp_path), _record())
    tamper(cache.entry(KEY))
    with pytest.raises((EntryInvalid, OSError), match=why):
        cache.check(KEY, PLAN, "zen4")
    with cache.locked(KEY):  # made again: the launcher drops it and installs a new one
        cache.install(KEY, _outputs(tmp_path, "again"), _record())
    assert cache.check(KEY, PLAN, "zen4")
    assert (cache.entry(KEY) / "app").read_text() == "again"


def _maker(root: str, log: str, hold: float) -> None:
    cache = Cache(Path(root))
    with cache.locked(KEY):
        if cache.check(KEY, PLAN, "zen4") is None:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(hold)  # a bake
            cache.install(KEY, _outputs(Path(root) / f"w{os.getpid()}"), _record())
    assert cache.check(KEY, PLAN, "zen4")


def test_many_processes_at_once_make_one_entry(tmp_path):
    log = tmp_path / "makes"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_maker, args=(str(tmp_path / "cache"), str(log), 0.5)) for _ in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 12
    assert len(log.read_text().split()) == 1, "more than one process made the entry"


def test_a_maker_killed_midway_leaves_no_entry_and_the_next_one_makes_it(tmp_path):
    cache = Cache(tmp_path / "cache")
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_stuck_maker, args=(str(tmp_path / "cache"),))
    p.start()
    deadline = time.monotonic() + 30
    while not list(cache.dir.glob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(cache.dir.glob(".tmp-*")), "the maker never started"
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert cache.check(KEY, PLAN, "zen4") is None  # no half entry
    with cache.locked(KEY):  # the kill released the lock
        cache.clean(KEY)
        cache.install(KEY, _outputs(tmp_path), _record())
    assert cache.check(KEY, PLAN, "zen4") and not list(cache.dir.glob(".tmp-*"))


def _stuck_maker(root: str) -> None:
    import shutil

    cache = Cache(Path(root))
    real = shutil.copyfile

    def slow(src, dst, **kw):
        out = real(src, dst, **kw)
        time.sleep(60)  # killed here, half the files written
        return out

    shutil.copyfile = slow
    with cache.locked(KEY):
        cache.install(KEY, _outputs(Path(root) / "w"), _record())


def test_a_waiter_is_told_once_when_the_holder_is_slow(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_maker, args=(str(tmp_path / "cache"), str(tmp_path / "makes"), 1.5))
    p.start()
    cache = Cache(tmp_path / "cache")
    deadline = time.monotonic() + 30
    while not (tmp_path / "makes").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    told = []
    with cache.locked(KEY, on_wait=lambda: told.append(1), wait_note_after=0.2):
        assert cache.check(KEY, PLAN, "zen4")
    p.join(30)
    assert told == [1]


def test_an_unusable_cache_folder_falls_back_with_a_note(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    root = choose_root(blocker / "cache")
    assert root.private and root.path.is_dir() and "mount a volume" in root.note
    home = choose_root(blocker / "cache", home_fallback=tmp_path / "home" / ".cache" / "bakery")
    assert not home.private and home.path == tmp_path / "home" / ".cache" / "bakery" and "caching in" in home.note
    fine = choose_root(tmp_path / "cache")
    assert not fine.private and fine.note == ""


def test_entry_names_are_plain(tmp_path):
    key = entry_key("my app", "1.0/beta", PLAN, "zen4")
    assert "/" not in key and " " not in key and key.endswith("-zen4")
    json.dumps(key)
