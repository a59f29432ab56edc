"""bakery matrix RECIPE... --targets T1,T2: IR images, then every (recipe, target) node tag, on Ray."""

import argparse
import json

from bakery.cli import common

DESCRIPTION = """\
Build the IR image of every recipe (reused when the registry has it for the same
recipe file and local sources), then bake every (recipe, target) node tag <name>:<version>-<target>
(reused when it exists). Every task is idempotent: a rerun builds and bakes nothing.

Runs on the Ray cluster at --ray-address, else on an embedded local Ray (2 CPUs).
Ray workers get this environment's PATH, BAKERY_*, BUILDAH_*, XDG_* and container
auth variables, and the registry address. IR images are built first, one task per
recipe; then the bakes fan out, at most --parallel at once. On a cluster, the workers
read the recipes at the same paths (a shared file system or the same checkout) and
need bakery, buildah and the registry's address. A cluster with Ray's token
authentication (the default of `ray start` since Ray 2.59) needs RAY_AUTH_MODE=token
(and RAY_AUTH_TOKEN, or the token file) in this command's environment, as any driver.

A failure is reported with its pair and the run goes on; the exit status is 1 when
any pair failed. A summary table closes the run (--json: the same as JSON).

  bakery matrix examples/pi/recipe.yaml examples/kernel/recipe.yaml --targets x86_64_v3,zen3,icelake"""


def setup_parser(sub, parent):
    p = sub.add_parser("matrix", parents=[parent], help="bake (recipe x target) node tags on Ray",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+", metavar="RECIPE")
    p.add_argument("--targets", required=True, metavar="T1,T2,...",
                   help="archspec targets, comma-separated ('native' is the driver's CPU)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="an existing Ray cluster (host:6379, ray://host:10001, or 'auto'); default: a local Ray")
    p.add_argument("--parallel", type=int, default=2, metavar="N", help="tasks at once (default 2)")
    p.add_argument("-j", "--jobs", type=int, default=0,
                   help="compile jobs per bake (default: the cores divided by --parallel)")
    p.add_argument("--slim", action="store_true", help="bake <tag>-<target>-slim images (runtime base + outputs)")
    p.add_argument("--rebuild", action="store_true", help="build the IR images even when they exist")
    p.add_argument("--publish", action="store_true",
                   help="then write one tag for every CPU per recipe: an OCI index of the IR image and the "
                        "level bakes (see 'bakery publish --help'), from the node tags just made")
    common.registry_options(p)
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    return p


def run(args) -> int:
    from bakery.errors import BakeryError
    from bakery.images import registry as registrymod
    from bakery.scale import matrix

    targets = common.target_list(args.targets)
    if args.parallel < 1:
        raise BakeryError("--parallel must be at least 1")
    registry = args.registry or registrymod.default_registry()
    res = matrix.run(args.recipes, targets, registry, engine=args.engine, tls_verify=args.tls_verify,
                     ray_address=args.ray_address, parallel=args.parallel, jobs=args.jobs, slim=args.slim,
                     rebuild=args.rebuild, debug=args.debug)
    published = _publish(res, registry, args) if args.publish else []
    if args.json:
        print(json.dumps({**res.to_json(), **({"published": published} if args.publish else {})}, indent=1))
    else:
        print(matrix.format_table(res))
        for p in published:
            print(f"published {p['ref']}@{p['digest']}" if p.get("digest") else f"not published {p['ref']}: {p['error']}")
    return 0 if res.ok and all(p.get("digest") for p in published) else 1


def _publish(res, registry: str, args) -> list[dict]:
    """An index per recipe whose IR image was built, of the targets baked without failure."""
    from bakery import engines as enginemod
    from bakery.errors import BakeryError
    from bakery.images import publish as publishmod

    out = []
    for ir in res.ir:
        if ir["status"] == "failed":
            continue
        ref = ir["ref"].split("@")[0]
        targets = [p["target"] for p in res.pairs if p["recipe"] == ir["recipe"] and p["status"] != "failed"]
        try:
            done = publishmod.publish(ref, targets, registry, enginemod.get_or_none(args.engine),
                                      tls_verify=args.tls_verify)
            out.append({"ref": ref, "digest": done.digest, "entries": done.entries, "tags": done.tags})
        except BakeryError as e:
            out.append({"ref": ref, "error": e.message})
    return out
