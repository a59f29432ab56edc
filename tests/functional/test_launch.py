"""The launcher on this machine, with a real capture and real bakes (the container runs are in
tests/images/test_launcher.py): one bake for the first start, none after; arguments, stdin,
exit code and argv[0] pass through; another ISA is exit 126; a tampered entry is made again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from bakery.launch import install

RUN_STUB = ("import sys; from pathlib import Path; from bakery.launch import stub; "
            "stub.INFO = Path(sys.argv[1]); stub.main(sys.argv[2:])")


@pytest.fixture(scope="module")
def wordstat_info(builds, tmp_path_factory):
    bundle = builds.bundle("wordstat")
    info = install.info(bundle, "127.0.0.1:9/wordstat:1.0", "linux/amd64", ["linux/amd64"])
    path = tmp_path_factory.mktemp("launch") / "launch.json"
    path.write_text(json.dumps(info))
    return path


def _start(info: Path, cache: Path, *args: str, name: str = "wordstat", stdin: str | None = None, **env: str):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BAKERY_")}
    environ.update({"BAKERY_CACHE": str(cache), "BAKERY_TARGET": "x86_64_v3", "PYTHONPATH": str(REPO), **env})
    return subprocess.run([sys.executable, "-c", RUN_STUB, str(info), f"/usr/local/bin/{name}", *args],
                          input=stdin, capture_output=True, text=True, env=environ, timeout=600)


def test_first_start_bakes_once_and_later_starts_run_at_once(wordstat_info, builds, tmp_path):
    cache = tmp_path / "cache"
    first = _start(wordstat_info, cache, "-", stdin="a b a\n")
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    assert len([l for l in lines if l.startswith("bakery: baking wordstat 1.0 for x86_64_v3")]) == 1, first.stderr
    assert "no node tag" in lines[0] or "not fetched" in lines[0], lines[0]
    baked = builds.baked("wordstat", "x86_64_v3") / "wordstat"
    want = subprocess.run([baked, "-"], input="a b a\n", capture_output=True, text=True)
    assert first.stdout == want.stdout and "words: 3" in first.stdout
    again = _start(wordstat_info, cache, "-", stdin="a b a\n")
    assert (again.returncode, again.stderr, again.stdout) == (0, "", want.stdout)
    entries = [p for p in (cache / "v1").iterdir() if (p / "entry.json").exists()]
    assert len(entries) == 1 and json.loads((entries[0] / "entry.json").read_text())["source"] == "bake"
    # argv[0] as the stub was started, the exit code as the binary's own
    usage = _start(wordstat_info, cache, "x", "y")
    assert (usage.returncode, usage.stderr) == (2, "usage: /usr/local/bin/wordstat [FILE]\n")


def test_quiet_says_nothing_and_a_tampered_entry_is_made_again(wordstat_info, tmp_path):
    cache = tmp_path / "cache"
    first = _start(wordstat_info, cache, "-", stdin="x\n", BAKERY_QUIET="1")
    assert first.returncode == 0 and first.stderr == ""
    entry = next(p for p in (cache / "v1").iterdir() if (p / "entry.json").exists())
    lib = entry / "libwordstat.so.1"
    data = lib.read_bytes()
    lib.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one bit of one byte: a stray edit
    again = _start(wordstat_info, cache, "-", stdin="x\n")
    assert again.returncode == 0 and "words: 1" in again.stdout
    assert "failed its check (libwordstat.so.1 does not match its digest): making it again" in again.stderr
    assert "bakery: baking" in again.stderr


def test_another_isa_is_one_line_and_exit_126(wordstat_info, tmp_path):
    cp = _start(wordstat_info, tmp_path / "cache", BAKERY_TARGET="neoverse_v1")
    assert cp.returncode == 126
    assert cp.stderr.splitlines()[0] == ("bakery: this image is linux/amd64 (x86_64) and BAKERY_TARGET=neoverse_v1 "
                                         "is aarch64 (neoverse_v1); the image has linux/amd64")
    assert not (tmp_path / "cache" / "v1").exists() or not list((tmp_path / "cache" / "v1").glob("*/entry.json"))


def test_a_target_this_cpu_cannot_run_is_one_line_and_exit_126(wordstat_info, tmp_path):
    """The launcher checks the CPU before a bake or an exec: a BAKERY_TARGET whose code needs
    features this CPU lacks would die of SIGILL somewhere in its run."""
    from bakery import target as targetmod

    name = next((n for n in ("zen4", "sapphirerapids", "zen3", "icelake", "x86_64_v4")
                 if targetmod.missing_on_host(n)), None)
    if name is None:
        pytest.skip("this CPU has every feature of the targets tried")
    cp = _start(wordstat_info, tmp_path / "cache", BAKERY_TARGET=name)
    missing = ", ".join(targetmod.missing_on_host(name))
    assert cp.returncode == 126 and cp.stderr.splitlines()[0] == (
        f"bakery: BAKERY_TARGET={name} needs {missing}, which this CPU lacks: its code would stop with an "
        "illegal instruction"), cp.stderr
    assert not list((tmp_path / "cache").glob("v1/*/entry.json"))  # nothing baked


def test_launcher_errors_are_one_line_and_exit_125(wordstat_info, tmp_path):
    cp = _start(wordstat_info, tmp_path / "cache", name="nosuch")
    assert cp.returncode == 125 and cp.stderr.startswith("bakery: this image has no executable 'nosuch'")
    bad = _start(wordstat_info, tmp_path / "cache", BAKERY_TARGET="zen99")
    assert bad.returncode == 125 and "unknown target 'zen99'" in bad.stderr


def test_install_writes_stubs_for_executables_only(builds, tmp_path):
    data = install.install(builds.bundle("wordstat"), "r.example:5000/wordstat:1.0", "linux/amd64",
                           ["linux/amd64", "linux/arm64"], root=tmp_path)
    assert data["executables"] == ["wordstat"] and data["outputs"] == ["libwordstat.so.1", "wordstat"]
    stub = tmp_path / "usr/local/bin/wordstat"
    assert stub.read_text().startswith("#!/usr/bin/python3 -I\n") and os.access(stub, os.X_OK)
    assert not (tmp_path / "usr/local/bin/libwordstat.so.1").exists()
    assert oct((tmp_path / "var/cache/bakery").stat().st_mode & 0o7777) == "0o1777"
    assert json.loads((tmp_path / "bakery/launch.json").read_text())["platforms"] == ["linux/amd64", "linux/arm64"]


def test_the_detected_target_is_remembered_per_cpu_and_request(wordstat_info, tmp_path):
    cache = tmp_path / "cache"
    assert _start(wordstat_info, cache, "-", stdin="x\n", BAKERY_TARGET="haswell").returncode == 0
    (memo,) = (cache / "v1" / "targets").iterdir()
    assert memo.read_text() == "haswell\n"
    memo.write_text("zen4\n")  # a memo that is wrong (edited, or another CPU's) never decides a bake:
    cp = _start(wordstat_info, cache, "-", stdin="x\n", BAKERY_TARGET="haswell")
    assert (cp.returncode, cp.stderr) == (0, "")  # no zen4 entry: detected again, the haswell one taken
    assert memo.read_text() == "haswell\n"
    other = _start(wordstat_info, cache, "-", stdin="x\n", BAKERY_TARGET="ivybridge")  # another request: its own
    assert other.returncode == 0 and "for ivybridge" in other.stderr


def test_a_registry_that_is_baking_is_waited_for_and_said_once(tmp_path):
    """bakery serve answers 503 + Retry-After while it bakes (past its --deadline): the launcher
    asks again until the registry answers, and says once that it waits."""
    import http.server
    import threading

    from bakery import oci
    from bakery.config import Settings
    from bakery.launch import finish

    asked = []

    class Baking(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            asked.append(self.command)
            if self.path == "/v2/":
                self.send_response(200)
                self.send_header("Content-Length", "0")
            elif len(asked) <= 4:
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer  # noqa: N815

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Baking)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    said: list[str] = []
    try:
        reg = oci.Registry(f"127.0.0.1:{srv.server_address[1]}", tls_verify=False)
        with pytest.raises(finish.NotThere):
            finish._wait_for(reg, "app", "1.0-zen4", Settings.from_env({}), said.append)
    finally:
        srv.shutdown()
    assert said == [f"waiting for 127.0.0.1:{srv.server_address[1]} to bake app:1.0-zen4"]
    assert asked.count("HEAD") >= 5
