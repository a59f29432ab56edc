"""The object cache with real captures and bakes: a re-capture after one changed file bakes that
module and the links; reused objects give byte-identical outputs; a bad entry is compiled again;
where the time goes is in the bake's JSON."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from helpers import write_project

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery.cli import main

FILES = {
    "main.c": "#include <stdio.h>\nint sq(int);\nint cube(int);\n"
              "int main(void) { printf(\"%d %d\\n\", sq(7), cube(3)); return 0; }\n",
    "sq.c": "int sq(int x) { return x * x; }\n",
    "cube.c": "int cube(int x) { return x * x * x; }\n",
    "Makefile": "app: main.c sq.c cube.c\n\t$(CC) -O2 -o app main.c sq.c cube.c\n",
}
REST = """\
    build:
      system: make
      options: [app]
    outputs: [app]
    """


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bake(bundle: Path, toolchain, builds, out: Path, cache: Path):
    plan = planmod.load(bundle)
    return bakemod.bake(bundle, plan, toolchain, builds.target("x86_64_v3"), out, cache=cache)


def test_a_recapture_after_one_changed_file_compiles_that_module_alone(tmp_path, toolchain, builds):
    (tmp_path / "p").mkdir()
    recipe_file = write_project(tmp_path / "p", "app", FILES, REST)
    cache = tmp_path / "cache"
    capturemod.capture(recipemod.load(recipe_file), tmp_path / "b1", toolchain)
    first = _bake(tmp_path / "b1", toolchain, builds, tmp_path / "o1", cache)
    assert first.timings and first.timings.cache == {"hits": 0, "misses": 3}
    again = _bake(tmp_path / "b1", toolchain, builds, tmp_path / "o2", cache)
    assert again.timings and again.timings.cache == {"hits": 3, "misses": 0}
    assert _digest(tmp_path / "o1" / "app") == _digest(tmp_path / "o2" / "app")  # reused objects, same binary

    (tmp_path / "p" / "src" / "cube.c").write_text("int cube(int x) { return x * x * x + 1; }\n")
    capturemod.capture(recipemod.load(recipe_file), tmp_path / "b2", toolchain)
    changed = _bake(tmp_path / "b2", toolchain, builds, tmp_path / "o3", cache)
    assert changed.timings and changed.timings.cache == {"hits": 2, "misses": 1}
    assert subprocess.run([tmp_path / "o3" / "app"], capture_output=True, text=True).stdout == "49 28\n"
    other = bakemod.bake(tmp_path / "b2", planmod.load(tmp_path / "b2"), toolchain, builds.target("x86_64_v2"),
                         tmp_path / "o4", cache=cache)
    assert other.timings and other.timings.cache == {"hits": 0, "misses": 3}  # another target: its own objects


def test_a_bad_entry_is_compiled_again(tmp_path, toolchain, builds):
    (tmp_path / "p").mkdir()
    recipe_file = write_project(tmp_path / "p", "app", FILES, REST)
    cache = tmp_path / "cache"
    capturemod.capture(recipemod.load(recipe_file), tmp_path / "b", toolchain)
    _bake(tmp_path / "b", toolchain, builds, tmp_path / "o1", cache)
    objs = sorted((cache / "objects").glob("*/*.o"))
    assert len(objs) == 3
    data = objs[0].read_bytes()
    objs[0].write_bytes(data[:-8] + bytes(8))  # a damaged object
    (objs[1].with_suffix(".json")).write_text("{")  # a damaged record
    res = _bake(tmp_path / "b", toolchain, builds, tmp_path / "o2", cache)
    assert res.timings and res.timings.cache == {"hits": 1, "misses": 2}
    assert _digest(tmp_path / "o1" / "app") == _digest(tmp_path / "o2" / "app")


def test_bake_json_says_where_the_time_goes(builds, tmp_path, capsys):
    bundle = builds.bundle("wordstat")
    assert main(["-q", "bake", str(bundle), "-t", "x86_64_v3", "-o", str(tmp_path / "out"), "--json",
                 "--cache", str(tmp_path / "cache")]) == 0
    timings = json.loads(capsys.readouterr().out)["timings"]
    phases = timings["phases"]
    assert set(phases) == set(bakemod.PHASES) and phases["compile"] > 0
    assert phases["disassemble"] > 0 or phases["scan"] > 0  # the text path, or the bitcode path
    assert timings["wall"]["modules"] > 0 and set(timings["links"]) == {"wordstat", "libwordstat.so.1"}
    assert timings["object_cache"] == {"hits": 0, "misses": len(planmod.load(bundle).modules)}
    assert timings["slowest_modules"][0]["seconds"] >= timings["slowest_modules"][-1]["seconds"]


def test_a_cmake_project_captured_twice_gives_the_same_bitcode(builds, toolchain, tmp_path):
    """CMake compiles by absolute path, and the path becomes the module's source_filename: the
    capture works in the same folder each time, so the same source gives the same modules (and
    every object is reused; in a fresh folder per capture, none was: LAMMPS re-baked all 491)."""
    recipe = builds.recipe("shapes")
    one = capturemod.capture(recipe, tmp_path / "b1", toolchain)
    two = capturemod.capture(recipe, tmp_path / "b2", toolchain)
    assert one["modules"] and set(one["modules"]) == set(two["modules"])
