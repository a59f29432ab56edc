"""bakery capture RECIPE -o BUNDLE: the app's own build, kept as bitcode + a bake plan."""

import json
from pathlib import Path

from bakery import capture as capturemod
from bakery import recipe as recipemod
from bakery import toolchain as toolchainmod


def setup_parser(sub, common):
    p = sub.add_parser(
        "capture", parents=[common], help="build a recipe, keeping pre-optimization bitcode and a bake plan",
        description="Run the recipe's unmodified build with bakery's compiler wrappers. Each C/C++ "
                    "translation unit is kept as pre-optimization LLVM bitcode (-O2 -Xclang "
                    "-disable-llvm-optzns: no optnone, no target-specific optimization yet); every link "
                    "is recorded. BUNDLE gets plan.json and the files it names.")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("-j", "--jobs", type=int, default=0, help="parallel build jobs (default: all cores)")
    p.add_argument("--workdir", type=Path, help="build here instead of a temporary directory (kept)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work tree")
    p.add_argument("--platform", default=None, metavar="OS/ARCH",
                   help="capture for another ISA with clang --target (linux/arm64, linux/amd64); "
                        "needs Debian's cross sysroot packages, and qemu-user for builds that run what they build")
    p.add_argument("--json", action="store_true", help="print a summary as JSON on stdout")
    return p


def run(args) -> int:
    recipe = recipemod.load(args.recipe)
    tc = toolchainmod.find()
    if args.platform:
        tc = tc.for_triple(toolchainmod.triple_of_platform(args.platform))
    plan = capturemod.capture(recipe, args.output.resolve(), tc, jobs=args.jobs, workdir=args.workdir,
                              keep=args.keep or args.debug)
    summary = {"bundle": str(args.output), "modules": len(plan["modules"]), "objects": len(plan["objects"]),
               "links": [{"output": l["output"], "install": l["install"]} for l in plan["links"]],
               "dropped_flags": plan["capture"]["dropped"], "toolchain": plan["toolchain"]}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        notes = {(d["flag"], d["why"]) for d in plan["capture"]["dropped"] if "compile-only" not in d["why"]}
        for flag, why in sorted(notes):
            print(f"note: dropped {flag!r} ({why})")
        print(args.output)
    return 0
