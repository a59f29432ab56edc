"""Which units are worth splitting between capture and bake (capture.simplify_min_bytes)?

    .venv/bin/python bench/split.py recipes/gsl.yaml --target x86_64_v3 --runs 2

The recipe is captured three ways: every unit split (simplify_min_bytes: 0), none split
(simplify: false) and the recipe as it is (the default threshold). Each capture is baked once
with one worker, for every module's own time; the module times of the first two give, for each
threshold, what a bake would spend on its modules. Then the three are baked with all cores,
alternating, --runs times each (medians). Prints both tables."""

from __future__ import annotations

import argparse
import statistics
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

THRESHOLDS = (0, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--target", default="x86_64_v3")
    ap.add_argument("--runs", type=int, default=2, help="bakes of each capture with all cores (default 2)")
    a = ap.parse_args()
    tc = toolchainmod.find()
    target = targetmod.resolve(a.target, compiler_version=tc.version, family=tc.family)
    work = Path(tempfile.mkdtemp(prefix="bakery-bench-split-"))
    doc = yaml.safe_load(a.recipe.read_text())
    base = recipemod.load(a.recipe)
    bundles: dict[str, Path] = {}
    for name, capture in (("all split", {"simplify_min_bytes": 0}), ("none split", {"simplify": False}),
                          ("as the recipe says", {})):
        d = {**doc, "capture": {**doc.get("capture", {}), **capture}}
        # Relative path sources stay relative to the recipe's own folder.
        f = a.recipe.resolve().parent / f".split-{len(bundles)}.yaml"
        f.write_text(yaml.safe_dump(d, sort_keys=False))
        try:
            recipe = recipemod.load(f)
        finally:
            f.unlink()
        bundles[name] = work / f"b{len(bundles)}"
        t = time.monotonic()
        capturemod.capture(recipe, bundles[name], tc)
        print(f"capture, {name}: {time.monotonic() - t:.1f} s", flush=True)
    per: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    for name, b in bundles.items():
        plan = planmod.load(b)
        r = bakemod.bake(b, plan, tc, target, work / "bin", jobs=1, isa_check=False)
        assert r.timings is not None
        per[name] = r.timings.per_module
        if name == "none split":
            sizes = {m.label: (b / m.path).stat().st_size for m in plan.modules.values()}
    split, whole = per["all split"], per["none split"]
    print(f"\n# {base.name} {base.version}, {a.target}: module seconds with one worker, by threshold")
    print(f"all split {sum(split.values()):.2f} s, none split {sum(whole.values()):.2f} s, "
          f"as the recipe says {sum(per['as the recipe says'].values()):.2f} s ({base.capture_simplify_min_bytes} B)")
    for thr in THRESHOLDS:
        total = sum(split[k] if sizes.get(k, 0) >= thr else whole[k] for k in split if k in whole)
        print(f"  split from {thr >> 10:>3} KiB: {total:.2f} s ({sum(1 for k in split if sizes.get(k, 0) >= thr)} split)")
    walls: dict[str, list[float]] = {n: [] for n in bundles}
    for _ in range(a.runs):
        for name, b in bundles.items():
            t = time.monotonic()
            bakemod.bake(b, planmod.load(b), tc, target, work / "bin")
            walls[name].append(time.monotonic() - t)
    print(f"\n# whole bakes with all cores, alternating, median of {a.runs}")
    for name, w in walls.items():
        print(f"  {name}: {statistics.median(w):.2f} s ({', '.join(f'{x:.2f}' for x in w)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
