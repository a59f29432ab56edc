"""bakery validate RECIPE...: check recipes against the schema."""

import json

from bakery import recipe as recipemod


def setup_parser(sub, common):
    p = sub.add_parser("validate", parents=[common], help="check recipes against the schema",
                       description="Check recipes; every error names the file, the line and the key.")
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe YAML file")
    p.add_argument("--json", action="store_true", help="print the validated recipes with defaults filled")
    return p


def run(args) -> int:
    loaded = [recipemod.load(path) for path in args.recipes]
    if args.json:
        print(json.dumps({str(r.path): r.data for r in loaded}, indent=1))
    elif not args.quiet:
        for r in loaded:
            print(f"{r.path}: ok ({r.name} {r.version}, {r.build.system}, outputs: {', '.join(r.outputs)})")
    return 0
