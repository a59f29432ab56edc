"""bakery build RECIPE: the IR image (capture inside a multi-stage build) + its plan artifact."""

import json

from bakery import engines as enginemod
from bakery import images as imagemod
from bakery import recipe as recipemod
from bakery import toolchain as toolchainmod
from bakery.cli import common
from bakery.images import registry as registrymod


def setup_parser(sub, parent):
    p = sub.add_parser(
        "build", parents=[parent], help="build the IR image and attach the bake plan to it",
        description="Render bakery/data/Containerfiles/ir.Containerfile.j2 for the recipe and build it: stage 1 runs the "
                    "recipe's build with bakery's wrappers (capture), the final stage is the runtime base + LLVM "
                    "+ the bitcode bundle at /bakery/bundle. Then push the image and attach the plan as an OCI "
                    "artifact (subject = the image). Without --registry/BAKERY_REGISTRY the embedded registry on "
                    "127.0.0.1 is used, and started if needed; base images are made from Debian's packages the "
                    "first time.")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("-t", "--tag", help="image reference (default: <registry>/<name>:<version>)")
    p.add_argument("--no-push", dest="push", action="store_false", help="build only; keep the image local")
    p.add_argument("--push", dest="push", action="store_true", default=True, help="push image and plan (default)")
    p.add_argument("--dry-run", action="store_true", help="print the rendered Containerfile and stop")
    p.add_argument("--platform", default=None, metavar="OS/ARCH[,...]",
                   help="platforms to build IR for, e.g. linux/amd64,linux/arm64 (default: this machine's); "
                        "several go under one OCI image index, each with its own plan")
    p.add_argument("-j", "--jobs", type=int, default=0, help="build jobs inside the capture stage (default: all cores)")
    common.registry_options(p)
    p.add_argument("--json", action="store_true")
    return p


def run(args) -> int:
    recipe = recipemod.load(args.recipe)
    llvm = toolchainmod.default_major()
    if args.dry_run:
        registry = args.registry or "REGISTRY"
        from bakery.images import base as basemod
        bases = basemod.names(registry, llvm, recipe.runtime_base)
        platforms = _platforms(args) or [imagemod.host_platform()]
        from bakery import oci
        ref = str(oci.Ref.parse(args.tag or f"{recipe.name}:{recipe.version}", default_registry=registry))
        for platform in platforms:
            print(imagemod.render_containerfile(recipe, bases, args.jobs, platform,
                                                f"localhost/bakery/debian:bookworm-{platform.split('/')[1]}"
                                                if platform != imagemod.host_platform() else None,
                                                ref=ref, platforms=platforms), end="")
        return 0
    registry = args.registry or registrymod.default_registry()
    res = imagemod.build(recipe, enginemod.get(args.engine), registry, tag=args.tag, push=args.push, llvm=llvm,
                         jobs=args.jobs, tls_verify=args.tls_verify, platforms=_platforms(args))
    print(json.dumps(res.to_json(), indent=1) if args.json else res.ref)
    return 0


def _platforms(args) -> list[str] | None:
    return [p.strip() for p in args.platform.split(",") if p.strip()] if args.platform else None
