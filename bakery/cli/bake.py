"""bakery bake BUNDLE|IMAGE --target T: native code for one CPU."""

import json
from pathlib import Path

from bakery.cli import common


def setup_parser(sub, parent):
    from bakery import bake as bakemod

    p = sub.add_parser(
        "bake", parents=[parent], help="finish the bitcode for one CPU (a local bundle or an IR image)",
        description="Retarget every function to the CPU, run the full optimization pipeline with the "
                    "target known, generate code and link with the captured link lines.\n\n"
                    "SOURCE is a bundle directory (from 'bakery capture'; needs --output) or an IR image "
                    "reference (from 'bakery build'). For an image, the node tag <tag>-<target> is reused when "
                    "it exists; otherwise the image's bundle is exported as data (nothing of the image runs), "
                    "baked in bakery's own toolchain image (no network, no capabilities, user nobody, "
                    "--timeout), and the plan's outputs are committed as one new layer on the IR image and "
                    "pushed as that tag (docs/security.md).\n\n"
                    "TARGET is 'native' (archspec detection) or an archspec name such as x86_64_v3, zen4, "
                    "skylake_avx512, neoverse_v1; one the toolchain cannot express is clamped to its closest "
                    "supported ancestor, with a note. The plan is untrusted input: it is validated and every "
                    "file's digest checked before anything runs.")
    p.add_argument("source", metavar="BUNDLE|IMAGE")
    p.add_argument("-t", "--target", default="native", help="archspec target or 'native' (default)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="write the outputs to DIR/<name> (required for a bundle; for an image: only the "
                        "binaries, no image, e.g. in an init container)")
    p.add_argument("-j", "--jobs", type=int, default=0, help="parallel compile jobs (default: all cores)")
    p.add_argument("--lto", choices=bakemod.LTO_MODES, default="none",
                   help="bundle only. none: optimize and compile each module alone (default); "
                        "thin / full: link-time optimization across modules")
    p.add_argument("--slim", action="store_true", help="image: runtime base + outputs only (no IR, no toolchain); refused when the outputs load a library the base lacks (libomp, -dev packages' libraries)")
    p.add_argument("--no-push", dest="push", action="store_false", default=True,
                   help="image: commit locally, do not push the node tag")
    p.add_argument("--keep", action="store_true", help="bundle: keep the bake's work tree")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="bundle: an object cache in DIR/objects; modules baked before with the same bitcode, "
                        "flags, target and toolchain are reused (a re-capture after one changed file bakes "
                        "one module and the links)")
    p.add_argument("--profile", metavar="PATH|none",
                   help="bundle: bake with this profile (a .profdata, or a folder from 'bakery profile'); "
                        "default: BUNDLE.profile/ when it exists and was made for this IR; 'none': no profile")
    p.add_argument("--no-isa-check", dest="isa_check", action="store_false", default=True,
                   help="do not refuse outputs with instructions the target lacks (the check disassembles "
                        "them after the links: inline asm, prebuilt objects or flags that need more than the "
                        "target, outside runtime dispatch); for code that checks the CPU in ways the check "
                        "cannot see")
    common.timeout_option(p)
    common.registry_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return p


def run(args) -> int:
    source = Path(args.source)
    if (source / "plan.json").exists() or (source.is_dir() and not args.source.count(":")):
        return _bake_bundle(args, source)
    return _bake_image(args)


def _bake_bundle(args, bundle: Path) -> int:
    from bakery import bake as bakemod
    from bakery import plan as planmod
    from bakery import target as targetmod
    from bakery import toolchain as toolchainmod
    from bakery.errors import BakeryError

    if args.output is None:
        raise BakeryError("baking a bundle needs --output DIR")
    bundle = bundle.resolve()
    plan = planmod.load(bundle)
    tc = toolchainmod.find()
    target = targetmod.resolve(args.target, compiler_version=tc.version, family=plan.toolchain.family)
    profile = None
    if args.profile != "none" and args.lto == "none":
        from bakery.bake import profile as profilemod

        profile = profilemod.find(bundle, Path(args.profile).resolve() if args.profile else None)
    elif args.profile not in (None, "none"):
        raise BakeryError("--profile bakes per module: use it with --lto none")
    result = bakemod.bake(bundle, plan, tc, target, args.output.resolve(), jobs=args.jobs, lto=args.lto,
                          keep=args.keep or args.debug, cache=args.cache.resolve() if args.cache else None,
                          isa_check=args.isa_check, profile=profile)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        for path in result.outputs.values():
            print(path)
    return 0


def _bake_image(args) -> int:
    from bakery import engines as enginemod
    from bakery import images as imagemod

    registry = common.registry_for(args, args.source)
    res = imagemod.bake(args.source, enginemod.get_or_none(args.engine), registry, args.target, push=args.push,
                        slim=args.slim, output=args.output, jobs=args.jobs,
                        tls_verify=args.tls_verify, timeout=args.timeout, isa_check=args.isa_check)
    print(json.dumps(res.to_json(), indent=1) if args.json else res.ref)
    return 0
