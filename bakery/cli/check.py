"""bakery check IMAGE: can this host, or the nodes whose NFD labels are given, run a node tag?"""

import argparse
import json
import sys
from pathlib import Path

from bakery.cli import common

DESCRIPTION = """\
Check that a CPU can run a node tag's binaries before a pod lands there and dies with SIGILL.

Every node tag bakery pushes (bake, publish, serve) carries an image compatibility artifact, in
the format of Kubernetes node-feature-discovery (NFD, v1alpha1): an OCI artifact of type
application/vnd.nfd.image-compatibility.v1alpha1 whose subject is the node tag's manifest, and
whose one layer is YAML with rules on the feature cpu.cpuid, one rule per ISA level of the
target (the x86-64 baseline, x86_64_v2, x86_64_v3 with AVX2, FMA3, BMI2..., x86_64_v4 with
AVX512F..., then what an exact model such as zen4 adds). NFD's own client finds it as a referrer
of the image and checks the node it runs on:  nfd compat validate-node --image IMAGE.

bakery check reads the same artifact (the referrers API, else the referrers tag schema
sha256-<digest>, as oras does) and checks it against this host (its /proc/cpuinfo flags, under
NFD's names) or against nodes' NFD labels (--node-labels: `kubectl get node NAME -o json`, a node
list, or a plain map such as {"feature.node.kubernetes.io/cpu-cpuid.AVX2": "true", ...}). It
prints one line per rule: ok, or the features missing. For a published index (bakery publish),
each bake in it is checked, and a node passes when one of them fits.

NFD does not label some common flags by default (BMI1, BMI2, F16C, LZCNT, POPCNT, SSE4, SSE42,
... its attributeBlacklist), though validate-node sees them: from labels of such a node they are
reported as unverifiable and do not fail the check.

examples:
  bakery check 127.0.0.1:5000/pi:1.0-x86_64_v3                 # this host
  kubectl get node n1 -o json | bakery check REG/pi:1.0-zen4 --node-labels -
  kubectl get nodes -o json > nodes.json
  bakery check REG/pi:1.0-x86_64_v4 --node-labels nodes.json    # every node of the cluster
  bakery check REG/pi:1.0 --json                               # a published index: which bakes fit
  oras discover --artifact-type application/vnd.nfd.image-compatibility.v1alpha1 REG/pi:1.0-x86_64_v3
  nfd compat validate-node --image REG/pi:1.0-x86_64_v3 --plain-http

exit status: 0 compatible, 1 not compatible, 2 could not check (unreadable labels, no artifact,
a registry error)."""


def setup_parser(sub, parent):
    p = sub.add_parser("check", parents=[parent], help="can this host (or these NFD-labelled nodes) run a node tag?",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="a node tag (REPO:TAG-TARGET, from bakery bake), or an index "
                                                  "from bakery publish")
    p.add_argument("--node-labels", metavar="FILE", help="NFD node labels instead of this host: a JSON or YAML "
                                                         "label map, a Node, or a node list; - for stdin")
    p.add_argument("--registry", help="registry HOST[:PORT] for an IMAGE that names none (default: "
                                      "$BAKERY_REGISTRY, else the embedded one)")
    p.add_argument("--tls-verify", type=common._bool, default=None, metavar="BOOL",
                   help="verify TLS (default: true, false for loopback registries)")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    return p


def _labels(path: str) -> list:
    """The nodes of a labels file, each a :class:`bakery.compat.Node`; any problem is one line."""
    import yaml

    from bakery import compat
    from bakery.errors import BakeryError
    from bakery.scale import k8s

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise compat.BadInput(f"--node-labels {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise compat.BadInput(f"--node-labels {path}: not a text file") from None
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise compat.BadInput(f"--node-labels {path}: not JSON or YAML{where}: "
                              f"{getattr(e, 'problem', None) or 'unreadable'}") from None
    try:
        nodes = k8s.nodes_from(data)
    except BakeryError as e:
        raise compat.BadInput(f"--node-labels {path}: {e.message.removeprefix('labels: ')}") from None
    if not nodes:
        raise compat.BadInput(f"--node-labels {path}: no node in it")
    source = "labels from stdin" if path == "-" else f"labels {path}"
    try:
        return [compat.labels_node(name, labels, source) for name, labels in nodes]
    except compat.BadInput as e:
        raise compat.BadInput(f"--node-labels {path}: {e.message}") from None


def _entries(reg, ref) -> tuple[str, list[dict]]:
    """(the digest IMAGE names, the images to check: one node tag, or the bakes of an index)."""
    from bakery import oci
    from bakery.errors import BakeryError
    from bakery.images.ir import ANN, ROLE

    data, media_type, digest = reg.get_manifest(ref.repository, ref.reference)
    doc = oci.json_object(data, f"the manifest of {ref}")
    if media_type not in (oci.INDEX, oci.DOCKER_LIST):
        return digest, [{"image": str(ref), "digest": digest, "variant": "", "target": "", "manifest": doc}]
    out = []
    for m in oci.descriptors(doc.get("manifests", []), f"the index {ref}"):
        ann = m.get("annotations", {})
        if ann.get(ROLE) == "bake":
            plat = m["platform"] if isinstance(m.get("platform"), dict) else {}
            out.append({"image": f"{ref.registry}/{ref.repository}@{m['digest']}", "digest": m["digest"],
                        "variant": str(plat.get("variant", "")), "target": ann.get(f"{ANN}.target", ""),
                        "manifest": None})
    if not out:
        raise BakeryError(f"{ref} is an index without bakes: its IR images run on any CPU of their platform "
                          "(they bake themselves), so it has no compatibility artifact",
                          "check a node tag (REF-<target>), or publish bakes with 'bakery publish REF --targets ...'")
    return digest, out


def _fetch(reg, ref, entry):
    from bakery import compat
    from bakery.errors import BakeryError
    from bakery.images.ir import ANN

    try:
        return compat.fetch(reg, ref.repository, entry["digest"])
    except BakeryError as e:
        ann = (entry["manifest"] or {}).get("annotations")
        if isinstance(ann, dict) and f"{ANN}.plan.mediaType" in ann:
            raise BakeryError(f"{entry['image']} is an IR image: it runs on any CPU of its platform (its launcher "
                              "bakes for the CPU it starts on), so it has no compatibility artifact",
                              "check one of its node tags (REF-<target>, from 'bakery bake'), or the index "
                              "'bakery publish' wrote") from None
        raise e


def run(args) -> int:
    from bakery import compat, oci
    from bakery.errors import BakeryError

    try:
        nodes = _labels(args.node_labels) if args.node_labels else [compat.host_node()]
        registry = common.registry_for(args, args.image)
        ref = oci.Ref.parse(args.image, default_registry=registry)
        reg = oci.Registry(ref.registry, tls_verify=args.tls_verify)
        digest, entries = _entries(reg, ref)
        artifacts = [(e, _fetch(reg, ref, e)) for e in entries]
    except compat.BadInput:
        raise
    except BakeryError as e:  # could not check: not the same as "not compatible"
        raise compat.BadInput(e.message, e.hint) from None

    checks = []
    for entry, art in artifacts:
        for node in nodes:
            results = compat.evaluate(art.spec, node)
            checks.append({"image": entry["image"], "digest": entry["digest"], "variant": entry["variant"],
                           "target": art.annotations.get("dev.bakery.target", entry["target"]),
                           "artifact": art.digest, "node": node.name, "source": node.source,
                           "compatible": all(r.ok for r in results), "rules": results})
    fits = {n.name: [c for c in checks if c["node"] == n.name and c["compatible"]] for n in nodes}
    compatible = all(fits.values())
    if args.json:
        print(json.dumps({"image": str(ref), "digest": digest, "compatible": compatible,
                          "checks": [{**c, "rules": [r.to_json() for r in c["rules"]]} for c in checks]}, indent=1))
        return 0 if compatible else 1
    index = len(entries) > 1 or entries[0]["manifest"] is None
    for c in checks:
        what = c["image"] if not index else f"{c['variant'] or '-'} {c['target'] or c['digest'][:19]}"
        where = "this host" if not args.node_labels else f"node {c['node']}"
        print(f"{what} ({c['target'] or 'target not named'}) on {where} ({c['source']}):"
              if not index else f"{what} on {where}:")
        for r in c["rules"]:
            print(f"  {r.line()}")
    for n in nodes:
        where = "this host" if not args.node_labels else f"node {n.name}"
        if index:
            good = [f"{c['variant'] or '-'} ({c['target']})" for c in fits[n.name]]
            print(f"{where} can run: {', '.join(good)}" if good else
                  f"not compatible: {where} can run none of the bakes in {ref} (only its IR image, which bakes itself)")
        elif fits[n.name]:
            print(f"compatible: {where} can run {entries[0]['image']}")
        else:
            lacks = sorted({m for c in checks if c["node"] == n.name for r in c["rules"] for m in r.missing})
            unchecked = sorted({u for c in checks if c["node"] == n.name for r in c["rules"] for u in r.unsupported})
            why = f"lacks {', '.join(lacks)}" if lacks else f"has rules bakery cannot check: {'; '.join(unchecked)}"
            print(f"not compatible: {where} {why}")
    return 0 if compatible else 1
