"""bakery bench RECIPE --target T: build time and run time, from source vs baked."""

import json
from pathlib import Path

from bakery import bench as benchmod
from bakery import recipe as recipemod
from bakery import toolchain as toolchainmod


def setup_parser(sub, common):
    p = sub.add_parser(
        "bench", parents=[common], help="compare from-source builds with bakes (build time, run time, code)",
        description="Build the recipe from source (generic, with the build's own flags, and with the target's flags added), capture it, "
                    "bake it for x86_64 and for TARGET, then run the recipe's bench command (or its test "
                    "command) on all four and check the bench symbol's vector registers.")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("-t", "--target", default="native", help="archspec target or 'native' (default)")
    p.add_argument("-r", "--repeat", type=int, help="runs per binary, best time is kept (default: recipe's)")
    p.add_argument("-j", "--jobs", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="keep builds and bakes here")
    p.add_argument("--profile", action="store_true",
                   help="also bake for TARGET with a profile trained by the recipe's bench.train (another "
                        "workload than the benchmark's), and compare it with the best from-source build")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p


def run(args) -> int:
    recipe = recipemod.load(args.recipe)
    result = benchmod.run(recipe, toolchainmod.find(), args.target, repeat=args.repeat, jobs=args.jobs, workdir=args.workdir,
                            profile=args.profile)
    print(json.dumps(result, indent=1) if args.json else benchmod.render(result))
    return 0 if all(result["checks"].values()) and result["outputs_agree"] else 1
