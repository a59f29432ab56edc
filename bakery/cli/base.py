"""bakery base create: the Debian base images, made once from Debian's packages."""

import json

from bakery import engines as enginemod
from bakery import toolchain as toolchainmod
from bakery.cli import common
from bakery.images import base as basemod
from bakery.images import registry as registrymod


def setup_parser(sub, parent):
    p = sub.add_parser("base", parents=[parent], help="make the Debian runtime/toolchain base images",
                       description="Make (once) the runtime base (debootstrap minbase bookworm), the LLVM "
                                   "toolchain base and the build base, and push them to the registry. build "
                                   "does this by itself when they are missing.")
    p.add_argument("action", choices=["create", "names"])
    p.add_argument("--runtime-base", help="use this image instead of Debian bookworm (must have apt)")
    common.registry_options(p)
    return p


def run(args) -> int:
    llvm = toolchainmod.default_major()
    registry = args.registry or registrymod.default_registry()
    if args.action == "names":
        print(json.dumps(basemod.names(registry, llvm, args.runtime_base).__dict__, indent=1))
        return 0
    b = basemod.ensure(enginemod.get(args.engine), registry, llvm, args.runtime_base,
                       tls_verify=args.tls_verify)
    print("\n".join([b.runtime, b.llvm, b.build]))
    return 0
