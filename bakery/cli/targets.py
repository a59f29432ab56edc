"""bakery targets: the CPU names bake accepts, and what 'native' is here."""

import json

import archspec.cpu

from bakery import target as targetmod
from bakery import toolchain as toolchainmod


def setup_parser(sub, common):
    p = sub.add_parser("targets", parents=[common], help="list archspec targets and the flags they bake with",
                       description="List the targets of this machine's ISA family with the flags the toolchain "
                                   "uses for them; a target the toolchain cannot express shows the ancestor "
                                   "it is clamped to.")
    p.add_argument("--all", action="store_true", help="every family, not just this machine's")
    p.add_argument("--json", action="store_true")
    return p


def run(args) -> int:
    tc = toolchainmod.find()
    host = archspec.cpu.host()
    rows = []
    for name in targetmod.known_names():
        uarch = archspec.cpu.TARGETS[name]
        if uarch.family.name != tc.family and not args.all:
            continue
        if uarch.family.name != tc.family:
            rows.append({"name": name, "family": uarch.family.name, "flags": None, "used": None})
            continue
        t = targetmod.resolve(name, compiler_version=tc.version, family=tc.family)
        rows.append({"name": name, "family": uarch.family.name, "flags": " ".join(t.flags), "used": t.name})
    if args.json:
        print(json.dumps({"native": host.name, "toolchain": tc.version, "targets": rows}, indent=1))
        return 0
    print(f"native: {host.name} (archspec); toolchain: clang {tc.version} ({tc.triple})")
    for r in rows:
        clamp = f"  -> {r['used']}" if r["used"] and r["used"] != r["name"] else ""
        print(f"  {r['name']:<22} {r['flags'] or '(other ISA)'}{clamp}")
    return 0
