"""Bake time against build time, and the re-bake after one changed file (the object cache).

    .venv/bin/python bench/rebake.py recipes/zstd.yaml --target x86_64_v3 --change programs/zstdcli.c

1. The recipe's sources are fetched once into a work folder and the recipe is rewritten to use
   that folder (a `path:` source), so a file can be changed as a developer would.
2. From source: the recipe's own build with clang-16 and the target's flags (same cores).
3. Capture, then a bake with an empty object cache: bake / build.
4. One file changed (a function appended to --change), captured again, baked with the cache:
   re-bake / first bake, and how many modules were reused.

Prints each time and the phase table of the first bake (bake --json's timings)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import target as targetmod
from bakery import toolchain as toolchainmod
from bakery.capture import sources as sourcesmod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--target", default="x86_64_v3")
    ap.add_argument("--change", required=True, help="a C or C++ file of the source tree, relative to its top")
    ap.add_argument("--build-seconds", type=float, metavar="S",
                    help="skip the from-source build: its time, measured before on these cores")
    ap.add_argument("--workdir", type=Path, help="keep the work here (default: a temporary folder, removed)")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bakery-rebake-"))
    work.mkdir(parents=True, exist_ok=True)
    tc = toolchainmod.find()
    original = recipemod.load(a.recipe)
    src = work / "project" / "src"
    if not src.exists():
        sourcesmod.fetch_all(original.sources, src)
    doc = yaml.safe_load(a.recipe.read_text())
    doc["sources"] = [{"path": "./src"}]
    recipe_file = work / "project" / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    recipe = recipemod.load(recipe_file)
    target = targetmod.resolve(a.target, compiler_version=tc.version, family=tc.family)
    print(f"# {original.name} {original.version}, target {target.name} ({' '.join(target.flags)}), clang {tc.version}")

    if a.build_seconds:
        build = a.build_seconds
        print(f"from-source build: {build:.1f} s (given, measured before)")
    else:
        t0 = time.monotonic()
        capturemod.from_source(recipe, tc, work / "source", flags=list(target.flags))
        build = time.monotonic() - t0
        print(f"from-source build: {build:.1f} s")

    t0 = time.monotonic()
    capturemod.capture(recipe, work / "b1", tc)
    print(f"capture: {time.monotonic() - t0:.1f} s")
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    first = bakemod.bake(work / "b1", planmod.load(work / "b1"), tc, target, work / "o1", cache=cache)
    print(f"bake, empty object cache: {first.seconds:.1f} s = {first.seconds / build:.2f} of the build "
          f"({first.modules} modules)")
    if first.timings:
        t = first.timings.to_json()
        print("  phases (CPU-seconds summed over modules): " +
              ", ".join(f"{k} {v:.2f}" for k, v in t["phases"].items()))
        print(f"  wall: modules {t['wall']['modules']:.2f} s, links {t['wall']['links']:.2f} s; slowest: " +
              ", ".join(f"{m['module']} {m['seconds']:.2f}" for m in t["slowest_modules"][:3]))

    changed = src / a.change
    text = changed.read_text()
    changed.write_text(text + "\nint bakery_rebake_marker(void) { return 42; }\n")
    try:
        t0 = time.monotonic()
        capturemod.capture(recipe, work / "b2", tc)
        print(f"capture after changing {a.change}: {time.monotonic() - t0:.1f} s")
    finally:
        changed.write_text(text)  # a --workdir run again starts from the same source
    again = bakemod.bake(work / "b2", planmod.load(work / "b2"), tc, target, work / "o2", cache=cache)
    hits = again.timings.cache if again.timings else None
    print(f"re-bake with the object cache: {again.seconds:.2f} s = {again.seconds / first.seconds:.2f} of the "
          f"first bake (object cache: {hits})")
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
