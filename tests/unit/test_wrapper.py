"""The compiler wrapper's command-line handling (no compiler needed)."""

import subprocess

import pytest

from bakery.capture import wrapper


def test_parse_compile():
    p = wrapper.parse(["-O2", "-I", "inc", "-DX=1", "-c", "a.c", "-o", "a.o", "-MD", "-MF", "a.d"])
    assert p["stage"] == "c" and p["output"] == "a.o"
    assert p["sources"] == [("a.c", "c")]
    assert "inc" not in p["inputs"]


def test_parse_compile_and_link():
    p = wrapper.parse(["-o", "pi", "pi.c", "timer.o", "-lm"])
    assert p["stage"] == "link" and p["sources"] == [("pi.c", "c")]
    assert p["link_argv"] == ["-o", "pi", "pi.c", "timer.o", "-lm"]


def test_parse_x_language():
    p = wrapper.parse(["-x", "c++", "-c", "weird.inc"])
    assert p["sources"] == [("weird.inc", "c++")]


@pytest.mark.parametrize("args,expected", [
    (["-Wl,-soname", "-Wl,libx.so.1"], ["-Wl,-soname,libx.so.1"]),
    (["-Xlinker", "-rpath", "-Xlinker", "/opt/lib"], ["-Wl,-rpath,/opt/lib"]),
    (["-Wl,--as-needed", "-Wl,-O1"], ["-Wl,--as-needed", "-Wl,-O1"]),
])
def test_merge_linker_options(args, expected):
    assert wrapper.merge_linker_options(args) == expected


def test_capture_flags_never_optnone_nor_host_cpu():
    assert wrapper.capture_flags(["-O0", "-march=native", "-g"], "-O2") == ["-g", "-O2"]
    assert wrapper.capture_flags(["-O3", "-mtune=znver3", "-flto=thin"], "-O2") == ["-O3"]


def test_bake_flags_keep_codegen_only():
    got = wrapper.bake_flags(["-O3", "-fPIC", "-Wall", "-Iinc", "-mavx2", "-march=native", "-ffast-math"], "-O2")
    assert got == ["-O3", "-fPIC", "-mavx2", "-ffast-math"]


def test_read_archive_with_long_names(tmp_path):
    names = ["a_very_long_member_name_number_one.o", "b.o"]
    for n in names:
        (tmp_path / n).write_bytes(n.encode() * 3)
    subprocess.run(["ar", "rc", "lib.a", *names], cwd=tmp_path, check=True)
    members = wrapper.read_archive(str(tmp_path / "lib.a"))
    assert [(n, d) for n, d in members] == [(n, n.encode() * 3) for n in names]


def test_read_thin_archive(tmp_path):
    (tmp_path / "m.o").write_bytes(b"odd")  # odd size: no padding in thin archives
    subprocess.run(["ar", "rcT", "thin.a", "m.o"], cwd=tmp_path, check=True)
    assert wrapper.read_archive(str(tmp_path / "thin.a")) == [("m.o", b"odd")]
