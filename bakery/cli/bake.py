"""bakery bake BUNDLE --target T --output DIR: native binaries for one CPU."""

import json
from pathlib import Path

from .. import bake as bakemod
from .. import plan as planmod
from .. import target as targetmod
from .. import toolchain as toolchainmod


def setup_parser(sub, common):
    p = sub.add_parser(
        "bake", parents=[common], help="finish a bundle's bitcode for one CPU",
        description="Retarget every function to the CPU, run the full optimization pipeline with the "
                    "target known, generate code and link with the captured link lines. TARGET is "
                    "'native' (archspec detection) or an archspec name such as x86_64_v3, zen4, "
                    "skylake_avx512, neoverse_v1; one the toolchain cannot express is clamped to its "
                    "closest supported ancestor, with a note. The plan is untrusted input: it is "
                    "validated and every file's digest checked before anything runs.")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("-t", "--target", default="native", help="archspec target or 'native' (default)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="write outputs to DIR/<name>")
    p.add_argument("-j", "--jobs", type=int, default=0, help="parallel compile jobs (default: all cores)")
    p.add_argument("--lto", choices=bakemod.LTO_MODES, default="none",
                   help="none: optimize and compile each module alone (default, fastest here); "
                        "thin / full: link-time optimization across modules")
    p.add_argument("--keep", action="store_true", help="keep the bake's work tree")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return p


def run(args) -> int:
    bundle = args.bundle.resolve()
    plan = planmod.load(bundle)
    tc = toolchainmod.find()
    target = targetmod.resolve(args.target, compiler_version=tc.version, family=plan["toolchain"]["family"])
    result = bakemod.bake(bundle, plan, tc, target, args.output.resolve(), jobs=args.jobs, lto=args.lto,
                          quiet=args.quiet, keep=args.keep or args.debug)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        for path in result.outputs.values():
            print(path)
    return 0
