"""Profile-guided bakes (bakery profile, bakery bake with a profile) with real clang, opt,
llvm-profdata and the profile runtime."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import write_project

from bakery.cli import main

FILES = {
    "classify.c": """\
        #include <stdio.h>
        #include <stdlib.h>
        static int classify(unsigned x) {
            if (x % 97 == 0) return 3;          /* rare */
            if (x & 1) return 1;
            if (x % 5 == 0) return 2;
            return 0;
        }
        int main(int argc, char **argv) {
            unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], 0, 10) : 1000, seed = argc > 2 ? 7u : 1u;
            unsigned long counts[4] = {0};
            for (unsigned i = 0; i < n; i++) { seed = seed * 1103515245u + 12345u; counts[classify(seed >> 8)]++; }
            printf("%lu %lu %lu %lu\\n", counts[0], counts[1], counts[2], counts[3]);
            return 0;
        }
        """,
    "Makefile": "classify: classify.c\n\t$(CC) -O2 -o classify classify.c\n",
}
REST = """\
    build:
      system: make
      options: [classify]
    outputs: [classify]
    """


@pytest.fixture(params=["split", "whole"])
def bundle(tmp_path: Path, request) -> Path:
    """Both bake paths: a unit split between capture and bake (the profile's passes go at the head
    of the bake's half), and a small unit kept whole (clang -fprofile-use on the whole pipeline)."""
    (tmp_path / "p").mkdir()
    split = "    capture:\n      simplify_min_bytes: 0\n" if request.param == "split" else ""
    recipe = write_project(tmp_path / "p", "classify", FILES, REST.rstrip(" ") + split)
    assert main(["-q", "capture", str(recipe), "-o", str(tmp_path / "b")]) == 0
    return tmp_path / "b"


def _bake(bundle: Path, out: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["-q", "bake", str(bundle), "-t", "x86_64_v3", "-o", str(out), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _run(path: Path, *args: str) -> str:
    return subprocess.run([str(path), *args], capture_output=True, text=True, check=True).stdout


def test_a_profile_is_trained_merged_and_used_by_the_next_bake(bundle, tmp_path, capsys):
    assert main(["-q", "profile", str(bundle), "-t", "x86_64_v3", "--", "classify", "200000"]) == 0
    assert main(["-q", "profile", str(bundle), "-t", "x86_64_v3", "--json", "--", "classify", "300000", "x"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])  # after what classify printed
    record = json.loads((bundle.with_name("b.profile") / "profile.json").read_text())
    assert printed == record
    assert [r["command"] for r in record["runs"]] == [["classify", "200000"], ["classify", "300000", "x"]]
    assert record["ir"].startswith("sha256:") and record["toolchain"]
    used = _bake(bundle, tmp_path / "pgo", capsys)
    plain = _bake(bundle, tmp_path / "plain", capsys, "--profile", "none")
    assert used["profile"]["mode"] == "use" and used["profile"]["functions_without_profile"] == 0
    assert "profile" not in plain
    # the profile changed the code, not what it computes (on inputs it was not trained on)
    assert (tmp_path / "pgo" / "classify").read_bytes() != (tmp_path / "plain" / "classify").read_bytes()
    assert _run(tmp_path / "pgo" / "classify", "123457") == _run(tmp_path / "plain" / "classify", "123457")


def test_a_profile_of_another_ir_is_not_used_and_a_tampered_one_is_refused(bundle, tmp_path, capsys):
    assert main(["-q", "profile", str(bundle), "-t", "x86_64_v3", "--", "classify", "1000"]) == 0
    folder = bundle.with_name("b.profile")
    record = json.loads((folder / "profile.json").read_text())
    (folder / "profile.json").write_text(json.dumps({**record, "ir": "sha256:" + "0" * 64}))
    capsys.readouterr()
    assert main(["-q", "bake", str(bundle), "-t", "x86_64_v3", "-o", str(tmp_path / "stale"), "--json"]) == 0
    out = capsys.readouterr()
    assert "profile" not in json.loads(out.out) and "made for another IR" in out.err
    (folder / "profile.json").write_text(json.dumps(record))
    with open(folder / "profile.profdata", "ab") as f:
        f.write(b"\0" * 8)
    assert main(["-q", "bake", str(bundle), "-t", "x86_64_v3", "-o", str(tmp_path / "bad")]) == 3
    assert "does not match its record" in capsys.readouterr().err


def test_a_training_run_that_fails_keeps_no_profile(bundle, capsys):
    assert main(["-q", "profile", str(bundle), "--", "false"]) != 0
    assert not (bundle.with_name("b.profile") / "profile.profdata").exists()
    assert "exited 1" in capsys.readouterr().err
