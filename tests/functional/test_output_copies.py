"""A declared output that is a copy, a hard link or a symlink of a linked output is installed
under its own name too (a link's ``also``), as a regular file: it used to be mapped to the same
link by its digest and dropped without a word."""

import os
import subprocess

import pytest
from helpers import write_project

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import target as targetmod
from bakery.errors import BakeryError
from bakery.launch import install as launch_install

SOURCES = {
    "prog.c": '#include <stdio.h>\nint main(void) { puts("prog 42"); return 0; }\n',
    "other.c": '#include <stdio.h>\nint main(void) { puts("other 7"); return 0; }\n',
}
MAKEFILE = (
    "all: prog other\n"
    "prog: prog.c\n\t$(CC) -O2 -o prog prog.c\n"
    "\tcp -f prog prog2\n\tln -f prog prog3\n\tln -sf prog prog4\n"
    "\tmkdir -p copies && cp -f prog copies/other\n"
    "other: other.c\n\t$(CC) -O2 -o other other.c\n"
)


def _recipe(tmp_path, outputs: str):
    return recipemod.load(write_project(tmp_path, "copies", {**SOURCES, "Makefile": MAKEFILE}, f"""\
        build:
          system: make
          options: [all]
        outputs: {outputs}
        """))


def test_copies_and_links_of_an_output_are_installed_under_each_name(tmp_path, toolchain):
    recipe = _recipe(tmp_path, "[prog, prog2, prog3, prog4, other]")
    capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    plan = planmod.load(tmp_path / "bundle")
    by_output = {link.output: link for link in plan.links}
    assert sorted(by_output) == ["other", "prog"], by_output
    assert by_output["prog"].install == "prog" and by_output["prog"].also == ("prog2", "prog3", "prog4")
    assert by_output["other"].also == ()
    assert sorted(name for name, _ in plan.installs()) == ["other", "prog", "prog2", "prog3", "prog4"]
    info = launch_install.info(tmp_path / "bundle", "127.0.0.1:5000/copies:1.0", "linux/amd64", ["linux/amd64"])
    assert info["executables"] == info["outputs"] == ["other", "prog", "prog2", "prog3", "prog4"]

    if toolchain.family != "x86_64":
        pytest.skip("x86_64_v3 is an x86_64 target")
    target = targetmod.resolve("x86_64_v3", compiler_version=toolchain.version, family=toolchain.family)
    out = tmp_path / "bin"
    result = bakemod.bake(tmp_path / "bundle", plan, toolchain, target, out)
    assert sorted(os.listdir(out)) == ["other", "prog", "prog2", "prog3", "prog4"]
    assert sorted(result.outputs) == sorted(os.listdir(out))
    prog = (out / "prog").read_bytes()
    for name in ("prog", "prog2", "prog3", "prog4"):
        path = out / name
        assert path.is_file() and not path.is_symlink(), f"{name} is not a regular file"
        assert os.lstat(path).st_nlink == 1, f"{name} is a hard link of another output"
        assert path.read_bytes() == prog, f"{name} differs from prog"
        cp = subprocess.run([str(path)], capture_output=True, text=True, timeout=60)
        assert (cp.returncode, cp.stdout) == (0, "prog 42\n"), (name, cp)
    cp = subprocess.run([str(out / "other")], capture_output=True, text=True, timeout=60)
    assert cp.stdout == "other 7\n", cp


def test_a_declared_output_no_link_produced_fails_the_capture_naming_it(tmp_path, toolchain):
    recipe = _recipe(tmp_path, "[prog, prog2, missing]")
    with pytest.raises(BakeryError) as e:
        capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    assert "'missing'" in e.value.message and "\n" not in e.value.message, e.value.message
    assert not (tmp_path / "bundle" / "plan.json").exists()


def test_a_copy_named_as_another_output_fails_the_capture(tmp_path, toolchain):
    """copies/other is a copy of prog: installed as 'other' it would overwrite the link 'other'."""
    recipe = _recipe(tmp_path, "[prog, other, copies/other]")
    with pytest.raises(BakeryError, match=r"'copies/other' .*installed as 'other'") as e:
        capturemod.capture(recipe, tmp_path / "bundle", toolchain)
    assert "\n" not in e.value.message
