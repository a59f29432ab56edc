"""Profile-guided bakes against the best from-source build, on the same cores.

    .venv/bin/python bench/pgo.py recipes/libyaml.yaml --exe example-reformatter \\
        --train-stdin train.yaml --bench-stdin bench.yaml [--target native] [--reps 11]

1. From source: the recipe's own build with clang-16, at -O2 and at -O3, both -march=native
   (the build's own flags otherwise).
2. Capture; `bakery profile` (an instrumented bake, the executable run on --train-stdin /
   --train-args); a bake without the profile and one with it (their times: the profile's cost).
3. The executable of each, on --bench-stdin / --bench-args: medians of --reps paired runs on one
   core (taskset -c 1), outputs compared.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import target as targetmod
from bakery import toolchain as toolchainmod
from bakery.bake import profile as profilemod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--exe", required=True)
    ap.add_argument("--target", default="native")
    ap.add_argument("--train-stdin", type=Path)
    ap.add_argument("--train-args", nargs="*", default=[])
    ap.add_argument("--bench-stdin", type=Path)
    ap.add_argument("--bench-args", nargs="*", default=[])
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--workdir", type=Path)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bakery-pgo-"))
    work.mkdir(parents=True, exist_ok=True)
    tc = toolchainmod.find()
    recipe = recipemod.load(a.recipe)
    bins: dict[str, Path] = {}
    for level in ("-O2", "-O3"):
        out = work / f"source{level}"
        shutil.rmtree(out, ignore_errors=True)
        capturemod.from_source(recipe, tc, out, flags=["-march=native", level])
        bins[f"from source {level} -march=native"] = out / a.exe
    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.rmtree(profilemod.folder_of(bundle), ignore_errors=True)
    capturemod.capture(recipe, bundle, tc)
    plan = planmod.load(bundle)
    target = targetmod.resolve(a.target, compiler_version=tc.version, family=plan.toolchain.family)
    gen = work / "instrumented"
    shutil.rmtree(gen, ignore_errors=True)
    bakemod.bake(bundle, plan, tc, target, gen, profile=profilemod.Profile("generate"), isa_check=False)
    raw = work / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir()
    with open(a.train_stdin or "/dev/null") as f:
        rc = subprocess.run([str(gen / a.exe), *a.train_args], stdin=f, stdout=subprocess.DEVNULL,
                            env={"LLVM_PROFILE_FILE": str(raw / "%p.profraw"), "LD_LIBRARY_PATH": str(gen)}).returncode
    if rc:
        sys.exit(f"the training run exited {rc}")
    profilemod.save(bundle, tc, sorted(raw.glob("*.profraw")), [a.exe, *a.train_args])
    seconds = {}
    for label, prof in (("baked", None), ("baked, profile-guided", profilemod.find(bundle))):
        out = work / label.replace(", ", "-").replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        t = time.monotonic()
        res = bakemod.bake(bundle, plan, tc, target, out, profile=prof)
        seconds[label] = time.monotonic() - t
        bins[f"{label} for {target.name}"] = out / a.exe
        if prof:
            print(f"# profile: {res.profile}")
    print(f"# {recipe.name} {recipe.version}, target {target.name}; bake {seconds['baked']:.2f} s, "
          f"with the profile {seconds['baked, profile-guided']:.2f} s")
    times: dict[str, list[float]] = {k: [] for k in bins}
    outs: dict[str, bytes] = {}
    for i in range(a.reps):
        for k in (list(bins) if i % 2 else list(bins)[::-1]):
            with open(a.bench_stdin or "/dev/null") as f:
                t0 = time.perf_counter()
                cp = subprocess.run(["taskset", "-c", "1", str(bins[k]), *a.bench_args], stdin=f, capture_output=True,
                                    env={"LD_LIBRARY_PATH": str(bins[k].parent)}, check=True)
                times[k].append(time.perf_counter() - t0)
            outs.setdefault(k, cp.stdout)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min(v for k, v in med.items() if k.startswith("from source"))
    for k, v in med.items():
        print(f"{k:<45} {v:8.3f} s  {best / v:5.3f}x the best from-source build")
    print("outputs identical" if len(set(outs.values())) == 1 else "OUTPUTS DIFFER")
    return 0 if len(set(outs.values())) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
