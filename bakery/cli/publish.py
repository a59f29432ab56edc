"""bakery publish REF --targets T1,T2: one tag for every CPU (an OCI image index)."""

import argparse
import json

from bakery.cli import common

DESCRIPTION = """\
Bake (or reuse) the node tags of REF for the targets, then write an OCI image index at REF that
standard runtimes resolve per CPU:

  linux/amd64            the IR image: the fallback, it finishes itself on any CPU
  linux/amd64 v2/v3/v4   the bakes for x86_64_v2, x86_64_v3, x86_64_v4
  linux/arm64            the arm64 IR image (an IR image built with --platform linux/arm64)
  linux/arm64 v8         the bake for aarch64

containerd takes the highest amd64 level the host supports; podman pull --variant v3 and
skopeo --override-variant v3 take the one asked for; without a variant, podman and skopeo take
the IR image. Exact models (zen4, sapphirerapids, neoverse_v2) are baked as tags of their own
(REF-zen4) and left out of the index, where a runtime could pick one for another CPU of the same
level. The IR image stays under REF-ir. Each entry names its target, the target's flags and the
IR image it was baked from. Publishing again after new bakes keeps the entries made from the
same IR image and replaces the index in one push, the last one.

  bakery publish 127.0.0.1:5000/pi:1.0 --targets x86_64_v2,x86_64_v3,x86_64_v4,zen4
  skopeo inspect --override-variant v3 docker://127.0.0.1:5000/pi:1.0"""


def setup_parser(sub, parent):
    p = sub.add_parser("publish", parents=[parent], help="one tag for every CPU: an OCI index of the bakes",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", metavar="REF", help="the IR image's REPO:TAG (from 'bakery build'), or an index published before")
    p.add_argument("--targets", required=True, metavar="T1,T2,...", help="archspec targets, comma-separated")
    p.add_argument("-j", "--jobs", type=int, default=0, help="parallel compile jobs per bake (default: all cores)")
    common.timeout_option(p)
    common.registry_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return p


def run(args) -> int:
    from bakery import engines as enginemod
    from bakery.images import publish as publishmod

    targets = common.target_list(args.targets)
    registry = common.registry_for(args, args.ref)
    res = publishmod.publish(args.ref, targets, registry, enginemod.get_or_none(args.engine), jobs=args.jobs,
                             tls_verify=args.tls_verify, timeout=args.timeout)
    if args.json:
        print(json.dumps(res.to_json(), indent=1))
    else:
        for e in res.entries:
            print(f"{e['platform']:<12} {e['variant'] or '-':<3} {e['target'] or 'IR image':<12} {e['digest']}")
        for tag in res.tags:
            print(f"tag only: {tag}")
        print(f"{res.ref}@{res.digest}")
    return 0
