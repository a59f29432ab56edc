"""Baked x86-64 executables and shared libraries carry the x86 ISA level note of their target
(GNU_PROPERTY_X86_ISA_1_NEEDED), so glibc refuses to start them on a lower CPU with a clear
message instead of a SIGILL in the middle of the run. Real captures, bakes and runs; the lower
CPU is qemu-user's Nehalem (an x86-64-v2 CPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import write_project

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery.bake import isanote

PROJECT = {
    "lib.c": "int api(int x) { return 2 * x + 1; }\n",
    "main.c": "#include <stdio.h>\nint api(int);\nint main(void) { printf(\"api %d\\n\", api(20)); return 0; }\n",
    "Makefile": "all: app\n"
                "libv.so: lib.c\n\t$(CC) -O2 -fPIC -shared -o libv.so lib.c\n"
                "app: main.c libv.so\n\t$(CC) -O2 -o app main.c -L. -lv -Wl,-rpath,'$$ORIGIN'\n",
}
REFUSED = "CPU ISA level is lower than required"
QEMU = "qemu-x86_64-static"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, toolchain) -> Path:
    if toolchain.family != "x86_64":
        pytest.skip("the ISA level note is an x86-64 property")
    tmp = tmp_path_factory.mktemp("isa")
    recipe = recipemod.load(write_project(tmp, "isa", PROJECT, """\
        build:
          system: make
          options: [all]
        outputs: [app, libv.so]
        """))
    capturemod.capture(recipe, tmp / "bundle", toolchain)
    return tmp / "bundle"


@pytest.fixture(scope="module")
def baked(bundle, toolchain, builds, tmp_path_factory):
    """target -> the folder of its bake (made on first use)."""
    made: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in made:
            out = tmp_path_factory.mktemp(f"bin-{target}")
            bakemod.bake(bundle, planmod.load(bundle), toolchain, builds.target(target), out)
            made[target] = out
        return made[target]
    return get


def _readelf(toolchain, *args: str) -> str:
    tool = shutil.which("readelf") or toolchain.tool("llvm-readelf")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


def _qemu(cpu: str, exe: Path) -> subprocess.CompletedProcess:
    if not shutil.which(QEMU):
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-user-static)")
    return subprocess.run([QEMU, "-cpu", cpu, str(exe)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["app", "libv.so"])
def test_a_v3_bake_carries_the_v3_note(baked, toolchain, name):
    path = baked("x86_64_v3") / name
    notes = _readelf(toolchain, "-n", str(path))
    assert "x86 ISA needed: x86-64-v3" in notes, notes
    # In the segment the loader reads, where GNU ld's -z x86-64-v3 puts it.
    assert "GNU_PROPERTY" in _readelf(toolchain, "-lW", str(path))
    assert isanote.isa_needed(path) == isanote.ISA_BITS["x86_64_v3"]


def test_a_v3_bake_is_refused_on_a_v2_cpu_with_glibcs_message(baked):
    cp = _qemu("Nehalem", baked("x86_64_v3") / "app")
    assert cp.returncode not in (0, 132, -4), (cp.returncode, cp.stdout, cp.stderr)  # 132/-4: SIGILL
    assert REFUSED in cp.stderr, cp.stderr
    assert cp.stdout == ""  # refused before main


def test_a_v3_bake_runs_on_a_v3_cpu(baked):
    exe = baked("x86_64_v3") / "app"
    cp = _qemu("max", exe)
    assert cp.returncode == 0 and cp.stdout == "api 41\n", (cp.returncode, cp.stdout, cp.stderr)
    native = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    if native.returncode == 0:  # a v3 host runs it as it is; a lower one refuses it the same way
        assert native.stdout == "api 41\n"
    else:
        assert REFUSED in native.stderr, (native.returncode, native.stderr)


def test_the_libraries_note_is_checked_too(baked, toolchain, tmp_path):
    """A baseline program that loads a v3 bake of its library: glibc names the library."""
    base, v3 = baked("x86_64"), baked("x86_64_v3")
    assert "x86 ISA needed: x86-64-baseline" in _readelf(toolchain, "-n", str(base / "app"))
    ok = _qemu("Nehalem", base / "app")
    assert ok.returncode == 0 and ok.stdout == "api 41\n", (ok.returncode, ok.stderr)
    shutil.copy2(base / "app", tmp_path / "app")
    shutil.copy2(v3 / "libv.so", tmp_path / "libv.so")  # found through the app's $ORIGIN rpath
    cp = _qemu("Nehalem", tmp_path / "app")
    assert cp.returncode not in (0, 132, -4) and REFUSED in cp.stderr and "libv.so" in cp.stderr, \
        (cp.returncode, cp.stderr)


@pytest.mark.parametrize(("target", "level"), [
    ("x86_64", "x86_64"), ("x86_64_v2", "x86_64_v2"), ("x86_64_v4", "x86_64_v4"),
    ("haswell", "x86_64_v3"), ("zen4", "x86_64_v4"), ("nehalem", "x86_64_v2")])
def test_the_level_is_the_targets_highest_x86_64_level(builds, target, level):
    assert isanote.level(builds.target(target, "x86_64")) == level


def test_no_note_off_x86_64(builds, tmp_path, toolchain):
    t = builds.target("neoverse_v1", "aarch64")
    assert isanote.level(t) is None and isanote.make(toolchain, t, tmp_path) is None
    assert not (tmp_path / "isa").exists()
