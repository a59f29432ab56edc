"""bakery capture RECIPE -o BUNDLE: the app's own build, kept as bitcode + a bake plan."""

import json
from pathlib import Path

from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import toolchain as toolchainmod


def setup_parser(sub, common):
    p = sub.add_parser(
        "capture", parents=[common], help="build a recipe, keeping pre-optimization bitcode and a bake plan",
        description="Run the recipe's unmodified build with bakery's compiler wrappers. Each C/C++ "
                    "translation unit is kept as pre-optimization LLVM bitcode (-O2 -Xclang "
                    "-disable-llvm-optzns: no optnone, no target-specific optimization yet); every link "
                    "is recorded. BUNDLE gets plan.json and the files it names. What the capture took "
                    "as the build made it (assembly, objects made outside the wrappers, system "
                    "libraries, probes) is summed up after the build, and recorded in the plan.")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("-j", "--jobs", type=int, default=0, help="parallel build jobs (default: all cores)")
    p.add_argument("--workdir", type=Path, help="build here instead of a temporary directory (kept)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work tree")
    p.add_argument("--platform", default=None, metavar="OS/ARCH",
                   help="capture for another ISA with clang --target (linux/arm64, linux/amd64); "
                        "needs Debian's cross sysroot packages, and qemu-user for builds that run what they build")
    p.add_argument("--json", action="store_true", help="print a summary as JSON on stdout")
    return p


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _names(items: list[str], most: int = 8) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def decision_lines(plan: planmod.Plan) -> list[tuple[str, str]]:
    """The capture's decisions as (heading, text) lines, a heading "" continuing the one above:
    one line per kind with its count, then the ones worth reading one by one."""
    lines: list[tuple[str, str]] = []
    if plan.probes:
        counts = ", ".join(f"{kind} {n}" for kind, n in plan.probes.items())
        lines.append(("probes", f"{sum(plan.probes.values())} run as they were, not captured ({counts})"))
    by_kind: dict[str, list[planmod.Decision]] = {}
    for d in plan.decisions:
        by_kind.setdefault(d.kind, []).append(d)
    natives = by_kind.get("native-object", [])
    if natives:
        lines.append(("native", f"{_count(len(natives), 'object')} linked as the build made them, not as bitcode "
                                "(no bake compiles them for its CPU)"))
        by_why: dict[str, list[str]] = {}
        for d in natives:
            by_why.setdefault(d.why, []).append(f"{d.what} ({_names(list(d.links), 3)})")
        lines += [("", f"{_names(whats)}: {why}") for why, whats in by_why.items()]
    libs = by_kind.get("system-library", [])
    if libs:
        lines.append(("libraries", f"{len(libs)} from the system the bake runs on: {_names([d.what for d in libs], 12)}"))
    fallbacks = by_kind.get("fallback", [])
    if fallbacks:
        lines.append(("fallback", f"{len(fallbacks)} in modules that bake slower"))
        lines += [("", f"{d.what}: {d.why}") for d in fallbacks[:12]]
        if len(fallbacks) > 12:
            lines.append(("", f"and {len(fallbacks) - 12} more (the plan's capture.decisions)"))
    if plan.dropped:
        harmless = sum(1 for d in plan.dropped if "compile-only" in d.why)
        lines.append(("dropped", f"{_count(len(plan.dropped), 'flag')} left out of the plan "
                                 f"({harmless} of them compile-only, on link lines)"))
        notes = sorted({(d.flag, d.why) for d in plan.dropped if "compile-only" not in d.why})
        lines += [("", f"{flag!r} ({why})") for flag, why in notes]
    return lines


def run(args) -> int:
    recipe = recipemod.load(args.recipe)
    tc = toolchainmod.find()
    if args.platform:
        tc = tc.for_triple(toolchainmod.triple_of_platform(args.platform))
    plan = capturemod.capture(recipe, args.output.resolve(), tc, jobs=args.jobs, workdir=args.workdir,
                              keep=args.keep or args.debug)
    summary = {"bundle": str(args.output), "modules": len(plan["modules"]), "objects": len(plan["objects"]),
               "links": [{"output": l["output"], "install": l["install"]} for l in plan["links"]],
               "dropped_flags": plan["capture"]["dropped"], "probes": plan["capture"]["probes"],
               "decisions": plan["capture"]["decisions"], "toolchain": plan["toolchain"]}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for heading, text in decision_lines(planmod.Plan.from_json(plan)):
            print(f"{heading}: {text}" if heading else f"  {text}")
        print(args.output)
    return 0
