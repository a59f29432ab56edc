"""bakery targets: the CPU names bake accepts, and what 'native' is here (and why)."""

import json

import archspec.cpu

from bakery import target as targetmod
from bakery import toolchain as toolchainmod
from bakery.errors import BakeryError


def setup_parser(sub, common):
    p = sub.add_parser("targets", parents=[common], help="list archspec targets and the flags they bake with",
                       description="List the targets of this machine's ISA family with the flags the toolchain "
                                   "uses for them; a target the toolchain cannot express shows the ancestor "
                                   "it is clamped to. --why native shows how 'native' was chosen: the "
                                   "candidates, the flags each lacks, and the flags ignored because code "
                                   "generation never uses them.")
    p.add_argument("--all", action="store_true", help="every family, not just this machine's")
    p.add_argument("--json", action="store_true")
    p.add_argument("--why", metavar="TARGET", help="explain 'native' (or why TARGET is or is not native here)")
    return p


def run(args) -> int:
    if args.why:
        return why(args.why, as_json=args.json)
    tc = toolchainmod.find()
    det = targetmod.native()
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
        print(json.dumps({"native": det.name, "archspec": det.archspec, "ignored": list(det.ignored),
                          "toolchain": tc.version, "targets": rows}, indent=1))
        return 0
    said = "archspec" if det.name == det.archspec else f"archspec says {det.archspec}; see --why native"
    print(f"native: {det.name} ({said}); toolchain: clang {tc.version} ({tc.triple})")
    for r in rows:
        clamp = f"  -> {r['used']}" if r["used"] and r["used"] != r["name"] else ""
        print(f"  {r['name']:<22} {r['flags'] or '(other ISA)'}{clamp}")
    return 0


def why(name: str, *, as_json: bool = False) -> int:
    """The reasoning behind 'native' on this host; for another name, its line in it."""
    det = targetmod.native()
    if name != "native":
        uarch = targetmod.lookup(name)
        cand = next((c for c in det.candidates if c.name == uarch.name), None)
        if as_json:
            print(json.dumps({"target": uarch.name, "native": det.name,
                              "candidate": None if cand is None else cand.__dict__}, indent=1))
            return 0
        if cand is not None:
            print(f"{cand.line()}\nnative: {det.name} ('bakery targets --why native' for all candidates)")
        elif uarch.family.name != det.family:
            print(f"{uarch.name}: a target for {uarch.family.name}, and this host is {det.family}")
        else:
            print(f"{uarch.name}: a target of {uarch.vendor}, and this host's CPU is {det.vendor}")
        return 0
    try:
        tc = toolchainmod.find()
        t = targetmod.resolve("native", compiler_version=tc.version, family=det.family)
        baked = f"bakes as {t.name}: {' '.join(t.flags)} (clang {tc.version})"
    except BakeryError as e:
        baked = f"flags: unknown here ({e.message})"
    if as_json:
        out = {"native": det.name, "archspec": det.archspec, "family": det.family, "vendor": det.vendor,
               "ignored": list(det.ignored), "compiler": det.compiler, "bakes": baked,
               "candidates": [c.__dict__ for c in det.candidates]}
        print(json.dumps(out, indent=1))
        return 0
    print("\n".join(det.explain()))
    print(f"  {baked}")
    return 0
