"""bakery inspect REF: the IR image, its plan artifact, and its node tags."""

import json
from typing import Any

from bakery import oci
from bakery import plan as planmod
from bakery.cli import common
from bakery.cli.capture import decision_lines
from bakery.images import registry as registrymod


def setup_parser(sub, parent):
    p = sub.add_parser("inspect", parents=[parent], help="show an IR image's plan and referrers",
                       description="Find the bake plan attached to an IR image (referrers API, else the "
                                   "sha256-<digest> tag schema) and summarize it.")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--plan", action="store_true", help="print the whole plan JSON")
    common.registry_options(p)
    p.add_argument("--json", action="store_true")
    return p


def run(args) -> int:
    from bakery import images as imagemod

    registry = args.registry or registrymod.default_registry()
    ref = oci.Ref.parse(args.ref, default_registry=registry)
    reg = oci.Registry(ref.registry, tls_verify=args.tls_verify)
    digest, plan, plan_bytes = imagemod.resolve_ir(reg, ref)
    if args.plan:
        print(plan_bytes.decode())
        return 0
    referrers = reg.referrers(ref.repository, digest)
    info: dict[str, Any] = {
        "ref": str(ref), "digest": digest, "app": plan.app.to_json(), "toolchain": plan.toolchain.to_json(),
        "plan_digest": oci.sha256(plan_bytes), "modules": len(plan.modules), "objects": len(plan.objects),
        "outputs": [name for name, _ in plan.installs()], "referrers": referrers,
        "target_sensitive": {m.label: {"levels": [v.level for v in m.variants], "macros": list(m.macros)}
                             for m in plan.modules.values() if m.variants},
        **capture_notes(plan),
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['ref']}@{digest}")
    print(f"  app:       {plan.app.name} {plan.app.version}")
    print(f"  toolchain: LLVM {plan.toolchain.llvm_major} ({plan.toolchain.triple})")
    print(f"  plan:      {info['plan_digest']} ({info['modules']} bitcode modules, {info['objects']} native objects)")
    print(f"  outputs:   {', '.join(info['outputs'])}")
    for source, info_ in info["target_sensitive"].items():
        print(f"  sensitive: {source}: captured for {', '.join(info_['levels'])} "
              f"(tests {', '.join(info_['macros']) or 'feature macros'})")
    for line in capture_text(plan):
        print(line)
    for r in referrers:
        print(f"  referrer:  {r['digest']} {r.get('artifactType', '')}")
    return 0


def capture_notes(plan: planmod.Plan) -> dict[str, Any]:
    """What the capture took as the build made it, for --json (a plan of an older capture: empty)."""
    return {"probes": dict(plan.probes), "decisions": [d.to_json() for d in plan.decisions],
            "dropped": [d.to_json() for d in plan.dropped]}


def capture_text(plan: planmod.Plan) -> list[str]:
    """The same as lines of the summary, headings aligned with the others."""
    return [f"  {(heading + ':') if heading else '':<10} {text}" for heading, text in decision_lines(plan)]
