"""Kubernetes: node-feature-discovery (NFD) labels -> archspec targets, and manifests.

NFD's cpu source labels a node with one label per CPUID flag it reports
(``feature.node.kubernetes.io/cpu-cpuid.AVX512F=true``; on x86 the flag names
are klauspost/cpuid's, on arm64 the kernel's hwcap names, upper case) and with
``cpu-model.vendor_id`` / ``cpu-model.family`` / ``cpu-model.id``.

The mapping to an archspec target uses archspec's own data and logic: the
labels become a partial microarchitecture (vendor + feature set, and the CPU
part on aarch64), archspec's compatibility check for the family lists the
targets whose features are all present, and archspec's ``host()`` ordering picks
the most specific one. There is no table of CPUs here, only the translation of
feature *names* (NFD's spelling -> the Linux spelling archspec uses).

Two NFD facts need care:

* **NFD hides common flags by default** (``attributeBlacklist``: BMI1, BMI2,
  CLMUL, CMOV, CX16, ERMS, F16C, HTT, LZCNT, MMX, MMXEXT, NX, POPCNT, RDRAND,
  RDSEED, RDTSCP, SGX, SGXLC, SSE, SSE2, SSE3, SSE4, SSE42, SSSE3). When no
  label of that list is present the node runs that default, and their absence
  says nothing.
* **Some archspec features have no NFD flag at all** (x86: clflushopt, clwb,
  fsgsbase, pku, rdpid, ...).

Such *unknown* features are taken to come with the target that introduced
them in archspec's lineage, but only a target that the labels *tell apart*
from every one of its ancestors can be chosen: one that adds nothing but
unknown features to an ancestor is never chosen on a guess, the ancestor is.
An Ivy Bridge adds only F16C and RDRAND to a Sandy Bridge, both hidden: both
map to sandybridge. A Zen 2 adds only CLWB to a Zen: it maps to zen. A Haswell
adds AVX2, FMA, MOVBE (reported) to an Ivy Bridge, so a node reporting them is
a haswell, with the F16C, BMI2, POPCNT... that archspec says a haswell has. An
NFD configured to report every flag (``attributeBlacklist: []``) is read
strictly: there, a missing F16C is missing. Where a hypervisor masks flags,
configure NFD so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import archspec.cpu
import yaml

from bakery import templates
from bakery.compat import (  # the one table of NFD's names; the compatibility artifacts use it too
    CPUID,
    NFD,
    NFD_AARCH64_ALIASES,
    NFD_DEFAULT_DENYLIST,
    NFD_X86,
    X86_VENDORS,
)
from bakery.errors import BakeryError

VENDOR_LABEL = NFD + "cpu-model.vendor_id"
FAMILY_LABEL = NFD + "cpu-model.family"
MODEL_LABEL = NFD + "cpu-model.id"
ARCH_LABEL = "kubernetes.io/arch"
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
K8S_ARCH = {v: k for k, v in ARCHES.items()}


def _arm_vendors() -> dict[str, str]:
    """archspec's aarch64 vendor names, keyed by their lower-case spelling."""
    from archspec.cpu.schema import TARGETS_JSON

    names = set(TARGETS_JSON["conversions"]["arm_vendors"].values())
    names |= {t.vendor for t in archspec.cpu.TARGETS.values() if t.family.name == "aarch64"}
    return {n.lower(): n for n in names if n not in ("generic", "Unknown")}


def _family_targets(family: str) -> list:
    return [t for t in archspec.cpu.TARGETS.values() if t.family.name == family]


def _nfd_to_archspec(family: str) -> dict[str, str]:
    if family == "x86_64":
        return dict(NFD_X86)
    if family == "aarch64":
        names = set().union(*(t.features for t in _family_targets("aarch64")))
        return {**{n.upper(): n for n in names}, **NFD_AARCH64_ALIASES}
    raise BakeryError(f"no NFD mapping for the {family} family", "x86_64 and aarch64 are mapped")


# -- reading labels ------------------------------------------------------------------

def nodes_from(data) -> list[tuple[str, dict[str, str]]]:
    """(node name, labels) from a label map, a Node object, or a Node list (`kubectl get node -o json`)."""
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        out = []
        for item in data["items"]:
            out.extend(nodes_from(item))
        return out
    if isinstance(data, dict) and ("metadata" in data or data.get("kind") == "Node"):
        meta = data.get("metadata") or {}
        return [(meta.get("name", "node"), {str(k): str(v) for k, v in (meta.get("labels") or {}).items()})]
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        return [(str(data.get("name", "node")), {str(k): str(v) for k, v in data["labels"].items()})]
    if isinstance(data, dict) and all(not isinstance(v, (dict, list)) for v in data.values()):
        return [("node", {str(k): _label_value(v) for k, v in data.items()})]
    raise BakeryError("labels: expected a label map, a Node, or a list of Nodes (kubectl get node -o json)")


def _label_value(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def load_labels(path: str | Path) -> list[tuple[str, dict[str, str]]]:
    text = Path(path).read_text() if str(path) != "-" else __import__("sys").stdin.read()
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as e:
        raise BakeryError(f"{path}: not YAML or JSON: {e}") from None
    nodes = nodes_from(data)
    if not nodes:
        raise BakeryError(f"{path}: no node in it")
    return nodes


# -- labels -> archspec ----------------------------------------------------------------

@dataclass
class NodeCPU:
    """What the labels say about a node's CPU, in archspec's terms."""

    family: str
    vendor: str                        # archspec's spelling, or "generic" when not labelled
    reported: set[str]                 # features the labels report
    unknown: set[str]                  # features the labels cannot tell (hidden or never reported)
    cpu_part: str = ""
    default_denylist: bool = False
    unmapped: list[str] = field(default_factory=list)   # NFD flags no archspec target uses

    def shown(self, features) -> set[str]:
        """The part of a feature set that the labels can show."""
        return set(features) - self.unknown


@dataclass
class Match:
    target: str
    node: NodeCPU
    inferred: set[str]                  # unknown features the target has: taken as present
    candidates: list[str]
    missing: dict[str, list[str]]       # the next targets (same vendor) -> the reported features they lack,
                                        # or the unknown ones they add when the labels cannot tell them apart

    @property
    def features(self) -> set[str]:
        return self.node.reported | self.inferred

    def to_json(self) -> dict:
        n = self.node
        return {"target": self.target, "family": n.family, "vendor": n.vendor, "cpu_part": n.cpu_part,
                "nfd_default_denylist": n.default_denylist, "reported": sorted(n.reported),
                "inferred": sorted(self.inferred), "unknown": sorted(n.unknown), "candidates": self.candidates,
                "next": self.missing}


def _family_of(labels: dict[str, str], flags: set[str]) -> str:
    arch = labels.get(ARCH_LABEL) or labels.get("beta.kubernetes.io/arch")
    if arch:
        if arch not in ARCHES:
            raise BakeryError(f"node architecture {arch!r} is not mapped", "amd64 and arm64 are")
        return ARCHES[arch]
    if flags & {"ASIMD", "FP", "EVTSTRM", "ATOMICS", "SVE"}:
        return "aarch64"
    if flags & (set(NFD_X86) | NFD_DEFAULT_DENYLIST):
        return "x86_64"
    raise BakeryError("the labels name neither the architecture (kubernetes.io/arch) nor any CPUID flag",
                      "are node-feature-discovery's labels on this node?")


def node_cpu(labels: dict[str, str]) -> NodeCPU:
    flags = {k[len(CPUID):] for k, v in labels.items() if k.startswith(CPUID) and str(v).lower() == "true"}
    family = _family_of(labels, flags)
    mapping = _nfd_to_archspec(family)
    targets = _family_targets(family)
    known = set().union(*(t.features for t in targets))

    vendor_label = labels.get(VENDOR_LABEL, "")
    if family == "x86_64":
        vendor = X86_VENDORS.get(vendor_label, "generic")
    else:
        vendor = _arm_vendors().get(vendor_label.lower(), "generic")

    default_denylist = family == "x86_64" and not (flags & NFD_DEFAULT_DENYLIST)
    hidden = NFD_DEFAULT_DENYLIST if default_denylist else frozenset()
    reportable = {f for name, f in mapping.items() if name not in hidden}
    reported = {mapping[f] for f in flags if f in mapping} & known
    unknown = known - reportable
    if family == "x86_64" and "ssse3" in reported:
        reported.add("sse3")  # as archspec does: ssse3 implies sse3

    cpu_part = ""
    model = labels.get(MODEL_LABEL, "")
    if family == "aarch64" and model.strip().isdigit():
        # klauspost/cpuid's model on arm64 is the MIDR part number (with or without the revision nibble).
        value = int(model)
        for t in targets:
            if t.cpu_part and t.cpu_part.startswith("0x") and int(t.cpu_part, 16) in (value, value >> 4):
                cpu_part = t.cpu_part
                break
    return NodeCPU(family, vendor, reported, unknown, cpu_part, default_denylist,
                   sorted(f for f in flags if mapping.get(f) not in known))


def _compatible(cpu: NodeCPU) -> list:
    """archspec's compatibility check, with the unknown features given the benefit of the doubt."""
    from archspec.cpu import detect

    info = detect.partial_uarch(vendor=cpu.vendor, features=cpu.reported | cpu.unknown, cpu_part=cpu.cpu_part)
    check = detect.COMPATIBILITY_CHECKS[cpu.family]
    return [t for t in archspec.cpu.TARGETS.values() if t.family.name == cpu.family and check(info, t)]


def _told_apart(t, cpu: NodeCPU) -> bool:
    """Do the labels tell the target from each of its ancestors (of the node's vendor, or generic)?"""
    mine = cpu.shown(t.features)
    return all(not mine <= cpu.shown(a.features) for a in t.ancestors if a.vendor in (cpu.vendor, "generic"))


def match(labels: dict[str, str]) -> Match:
    """The most specific archspec target the node's labels show (archspec's host() choice)."""
    cpu = node_cpu(labels)
    root = archspec.cpu.TARGETS[cpu.family]
    compatible = _compatible(cpu)
    candidates = [t for t in compatible if _told_apart(t, cpu)] or [root]

    def order(t):
        return len(t.ancestors), len(t.features)

    generic = [c for c in candidates if c.vendor == "generic"] or [root]
    best_generic = max(generic, key=order)
    pool = candidates
    if cpu.cpu_part and any(c.cpu_part == cpu.cpu_part for c in pool):
        pool = [c for c in pool if c.cpu_part == cpu.cpu_part]
    pool = [c for c in pool if c > best_generic]
    best = max(pool, key=order) if pool else best_generic
    missing = {}
    for t in _family_targets(cpu.family):
        if best in t.parents and t.vendor in (cpu.vendor, "generic") and t not in candidates:
            lacking = sorted(cpu.shown(t.features) - cpu.reported)
            missing[t.name] = lacking or sorted((t.features - best.features) & cpu.unknown)
    return Match(best.name, cpu, best.features & cpu.unknown, sorted(c.name for c in candidates), missing)


def target_for_labels(labels: dict[str, str]) -> str:
    return match(labels).target


# -- archspec -> NFD: scheduling a node tag ----------------------------------------------

@dataclass
class Requirement:
    expressions: list[dict]            # nodeSelectorTerm.matchExpressions
    unchecked: list[str]               # features of the target no NFD label can require


def requirement(target: str) -> Requirement:
    """Node affinity for the target: every feature NFD reports by default, the vendor, the architecture."""
    try:
        t = archspec.cpu.TARGETS[target]
    except KeyError:
        raise BakeryError(f"unknown target {target!r}: not an archspec microarchitecture",
                          "run 'bakery targets' to list them") from None
    family = t.family.name
    if family not in K8S_ARCH:
        raise BakeryError(f"target {target} is {family}: only x86_64 and aarch64 nodes are mapped")
    mapping = _nfd_to_archspec(family)
    inverse: dict[str, str] = {}
    for name, feature in mapping.items():
        if name in NFD_AARCH64_ALIASES or (family == "x86_64" and name in NFD_DEFAULT_DENYLIST):
            continue
        inverse.setdefault(feature, name)
    exprs = [{"key": ARCH_LABEL, "operator": "In", "values": [K8S_ARCH[family]]}]
    if t.vendor != "generic":
        values = [k for k, v in X86_VENDORS.items() if v == t.vendor] if family == "x86_64" else \
            sorted({t.vendor, t.vendor.upper()} if t.vendor.lower() == "nvidia" else {t.vendor})
        exprs.append({"key": VENDOR_LABEL, "operator": "In", "values": values})
    unchecked = []
    for feature in sorted(t.features):
        if feature in inverse:
            exprs.append({"key": CPUID + inverse[feature], "operator": "In", "values": ["true"]})
        elif feature != "sse3" or "ssse3" not in t.features:
            unchecked.append(feature)
    return Requirement(exprs, unchecked)


def labels_for(target: str) -> dict[str, str]:
    """The labels a node that satisfies exactly the target's requirement would carry (tests, examples)."""
    labels = {}
    for e in requirement(target).expressions:
        labels[e["key"]] = e["values"][0]
    return labels


# -- manifests -------------------------------------------------------------------------------

def _render(template: str, **ctx) -> str:
    from bakery import templates

    return templates.render_file(f"k8s/{template}", **ctx)


def dns_name(text: str) -> str:
    import re

    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not name:
        raise BakeryError(f"{text!r} gives no valid Kubernetes name")
    return name


def render_job(ref: str, *, target: str = "auto", name: str | None = None, pull_policy: str = "IfNotPresent",
               command: list[str] | None = None, args: list[str] | None = None, slim: bool = False,
               cpu: str | None = None, memory: str | None = None, cache_host_path: str | None = None,
               serve: str | None = None, push: bool = False, backoff_limit: int = 0,
               namespace: str | None = None) -> str:
    """A Job for an app's IR image.

    target "auto": the pod runs the IR image itself. Its launcher (bakery.launch) finishes the
    binary for the node's CPU once: a cache volume at /var/cache/bakery (an emptyDir, or with
    ``cache_host_path`` a hostPath shared by every pod of the node), then the node tag
    REF-<target> from the registry (``serve``: a `bakery serve` address, which bakes a missing
    one once for every node that asks), then a bake in the container. With ``push`` that
    bake is pushed as the node tag (the pod needs registry credentials).

    target T: the pod pulls the node tag REF-T (made by `bakery matrix`,
    `bakery bake` or `bakery serve`) and is pinned to nodes whose NFD labels
    have T's features.
    """
    from bakery import oci

    parsed = oci.Ref.parse(ref)
    app = parsed.repository.rsplit("/", 1)[-1]
    resources = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    ctx: dict[str, Any] = dict(name=dns_name(name or f"{app}-{parsed.tag or 'pinned'}-{target}"), namespace=namespace,
               app=dns_name(app), pull_policy=pull_policy, command=command, args=args,
               backoff_limit=backoff_limit, target=target, ref=str(parsed), resources=resources)
    if target == "auto":
        env = {}
        if serve:
            env["BAKERY_REGISTRY"] = serve
        if push:
            env["BAKERY_PUSH"] = "1"
        ctx.update(image=str(parsed), affinity=None, unchecked=[], env=env, cache_host_path=cache_host_path,
                   serve=serve)
    else:
        if parsed.digest or not parsed.tag:
            raise BakeryError(f"{ref}: a node tag needs the IR image's tag, not a digest",
                              "name the IR image as REPO:TAG")
        if cache_host_path or serve or push:
            raise BakeryError("--cache-host-path, --serve and --push are for --target auto (the IR image's launcher)",
                              "a node tag has its binaries already")
        req = requirement(target)
        tag = f"{parsed.tag}-{target}" + ("-slim" if slim else "")
        ctx.update(image=str(parsed.with_tag(tag)), affinity=req.expressions, unchecked=req.unchecked, env={},
                   cache_host_path=None, serve=None)
    return _render("job.yaml.j2", **ctx)


def render_serve(image: str, *, upstream: str | None = None, registry_image: str = "registry:2",
                 name: str = "bakery", namespace: str | None = None, port: int = 5001, registry_port: int = 5000,
                 service_type: str = "ClusterIP", workers: int = 1, policy: str | None = None,
                 storage_claim: str | None = None, pull_policy: str = "IfNotPresent") -> str:
    """A Deployment of the registry (CNCF distribution) with `bakery serve` as a sidecar, and its Service.

    With ``upstream`` set to a registry elsewhere, only `bakery serve` is deployed."""
    embedded = upstream is None
    if policy is None:  # the documented deployment default: named repositories and targets only
        policy = templates.source("registry/lazy-policy.yaml")
    name = dns_name(name)
    ctx: dict[str, Any] = dict(name=name, namespace=namespace, image=image, registry_image=registry_image,
               embedded=embedded, upstream=upstream or f"http://127.0.0.1:{registry_port}", port=port,
               registry_port=registry_port, service_type=service_type, workers=workers, policy=policy,
               storage_claim=storage_claim, pull_policy=pull_policy, htpasswd_secret=f"{name}-htpasswd",
               auth_secret=f"{name}-auth")
    return _render("serve.yaml.j2", **ctx)


def render_affinity(target: str) -> str:
    req = requirement(target)
    return _render("affinity.yaml.j2", target=target, affinity=req.expressions, unchecked=req.unchecked)


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]
