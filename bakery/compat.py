"""Image compatibility artifacts: what a node tag's binaries need of a CPU, in node-feature-discovery's format.

A node tag's binaries are compiled for one archspec target, and a CPU that lacks one of the
target's instructions stops them with SIGILL partway through a run. Each node tag therefore
carries, as an OCI referrer, an *image compatibility artifact* in the format of Kubernetes
node-feature-discovery (NFD), experimental version ``v1alpha1``. NFD's client checks a node
against it (``nfd compat validate-node --image REF``), and so does ``bakery check``.

The format, as NFD documents and implements it (followed here field for field; no NFD code is
used):

* https://kubernetes-sigs.github.io/node-feature-discovery/v0.17/usage/image-compatibility.html
  and .../v0.20/usage/image-compatibility.html: the schema (``version``; ``compatibilities``, each
  with ``rules`` and the optional ``weight``, ``tag``, ``description``), the OCI artifact
  (``artifactType: application/vnd.nfd.image-compatibility.v1alpha1``, an empty config, one layer
  ``application/vnd.nfd.image-compatibility.spec.v1alpha1+yaml``, ``subject`` the image manifest)
  and ``nfd compat validate-node --image``.
* https://github.com/kubernetes-sigs/node-feature-discovery/blob/master/api/image-compatibility/v1alpha1/spec.go:
  ``Spec{version, compatibilities}``, ``Compatibility{rules, weight, tag, description}``; since
  NFD v0.18 a rule is a NodeFeatureGroup ``GroupRule`` (``name``, ``vars``, ``varsTemplate``,
  ``matchFeatures``, ``matchAny``), before it a NodeFeatureRule ``Rule``. The rules written here use
  ``name`` and ``matchFeatures`` only, which both read.
* https://github.com/kubernetes-sigs/node-feature-discovery/blob/master/api/nfd/v1alpha1/types.go and
  the CRD schema deployment/base/nfd-crds/nfd-api-crds.yaml: ``FeatureMatcherTerm{feature,
  matchExpressions, matchName}``, ``MatchExpression{op, value, type}``, the operators.
* https://github.com/kubernetes-sigs/node-feature-discovery/blob/master/pkg/client-nfd/compat/artifact-client/client.go:
  how validate-node finds the artifact: it resolves the image (an index by ``--platform``), asks
  for the referrers of that manifest with the artifact type (oras-go: the referrers API, else the
  referrers tag schema, which bakery keeps because CNCF distribution has no referrers API), takes
  the newest by the descriptor's ``org.opencontainers.image.created`` and reads its first layer as
  YAML.
* https://kubernetes-sigs.github.io/node-feature-discovery/stable/usage/customization-guide.html#available-features:
  the feature ``cpu.cpuid`` (a flag per CPUID feature; x86 names are klauspost/cpuid's FeatureID
  names, arm64 the kernel's hwcap names in upper case) and ``cpu.model`` (``vendor_id``, ...).

What goes in: the features of the archspec target that code generation uses
(:func:`bakery.target.codegen_features`: archspec's list, plus what clang turns on beyond it, less
:data:`bakery.target.NOT_CODEGEN`), and the ABI's baseline, each under NFD's name
(:data:`NFD_X86`, :data:`NFD_AARCH64`). Left out, and named in the artifact: features no NFD flag
shows (x86 ``sha512``, ``3dnowprefetch``; ``clwb``, ``pku``, ``fsgsbase`` are also not codegen) and
features no compiler emits (``flush_l1d``, ``pku``, ``xsave``, the aarch64 ``evtstrm``). There is no
kernel or OS rule: NFD (klauspost/cpuid) reports AVX, AVX2 and AVX-512 only when the kernel has
enabled their register state (XGETBV), so the ``cpu.cpuid`` rules hold the kernel's part; the OS
is Linux wherever NFD runs, and the architecture is the baseline rule (an arm64 node has no SSE2).
NFD's newest ``X86_64_V2``..``X86_64_V4`` flags are not used: older NFD releases lack them.

This module is stdlib and archspec only, except the YAML reader (PyYAML, imported when used).
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import archspec.cpu

from bakery import __version__, oci
from bakery import target as targetmod
from bakery.errors import BakeryError, PlanRefused

ARTIFACT_TYPE = "application/vnd.nfd.image-compatibility.v1alpha1"
SPEC_MEDIA_TYPE = "application/vnd.nfd.image-compatibility.spec.v1alpha1+yaml"
VERSION = "v1alpha1"
CPUID_FEATURE = "cpu.cpuid"
MODEL_FEATURE = "cpu.model"
SPEC_TITLE = "image-compatibility.yaml"
MAX_SPEC_BYTES = 1 << 20
_ANN = "dev.bakery"

# NFD's node labels: feature.node.kubernetes.io/cpu-cpuid.AVX2=true, .../cpu-model.vendor_id=AMD.
NFD = "feature.node.kubernetes.io/"
CPUID = NFD + "cpu-cpuid."
MODEL = NFD + "cpu-model."

# -- the one table of names: NFD's cpu.cpuid flags <-> the Linux names archspec uses ------------------

# NFD x86 flag (klauspost/cpuid FeatureID name) -> Linux /proc/cpuinfo flag (archspec's spelling).
# Flags archspec never uses (HTT, NX, ERMS, ...) are left out: they cannot change a match.
NFD_X86 = {
    "ADX": "adx", "AESNI": "aes", "AMD3DNOW": "3dnow", "AMD3DNOWEXT": "3dnowext",
    "AMXBF16": "amx_bf16", "AMXINT8": "amx_int8", "AMXTILE": "amx_tile",
    "AVX": "avx", "AVX2": "avx2", "AVX512BF16": "avx512_bf16", "AVX512BITALG": "avx512_bitalg",
    "AVX512BW": "avx512bw", "AVX512CD": "avx512cd", "AVX512DQ": "avx512dq", "AVX512ER": "avx512er",
    "AVX512F": "avx512f", "AVX512FP16": "avx512_fp16", "AVX512IFMA": "avx512ifma", "AVX512PF": "avx512pf",
    "AVX512VBMI": "avx512vbmi", "AVX512VBMI2": "avx512_vbmi2", "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni", "AVX512VP2INTERSECT": "avx512_vp2intersect",
    "AVX512VPOPCNTDQ": "avx512_vpopcntdq", "AVXIFMA": "avx_ifma", "AVXNECONVERT": "avx_ne_convert",
    "AVXVNNI": "avx_vnni", "AVXVNNIINT8": "avx_vnni_int8", "AVXVNNIINT16": "avx_vnni_int16",
    "BMI1": "bmi1", "BMI2": "bmi2", "CLDEMOTE": "cldemote", "CLMUL": "pclmulqdq", "CLZERO": "clzero",
    "CMOV": "cmov", "CMPCCXADD": "cmpccxadd", "CMPXCHG8": "cx8", "CX16": "cx16", "F16C": "f16c",
    "FLUSH_L1D": "flush_l1d", "FMA3": "fma", "FMA4": "fma4", "FXSR": "fxsr", "GFNI": "gfni",
    "LAHF": "lahf_lm", "LZCNT": "abm", "MMX": "mmx", "MOVBE": "movbe", "MOVDIR64B": "movdir64b",
    "MOVDIRI": "movdiri", "POPCNT": "popcnt", "RDRAND": "rdrand", "RDSEED": "rdseed",
    "SERIALIZE": "serialize", "SHA": "sha_ni", "SM3_X86": "sm3", "SM4_X86": "sm4", "SSE": "sse",
    "SSE2": "sse2", "SSE3": "sse3", "SSE4": "sse4_1", "SSE42": "sse4_2", "SSE4A": "sse4a",
    "SSSE3": "ssse3", "SYSCALL": "syscall", "TBM": "tbm", "VAES": "vaes", "VPCLMULQDQ": "vpclmulqdq",
    "WAITPKG": "waitpkg", "X87": "fpu", "XOP": "xop", "XSAVE": "xsave", "XSAVEC": "xsavec",
    "XSAVEOPT": "xsaveopt",
}
# /proc/cpuinfo spells SSE3 "pni" (archspec adds "sse3" when it reads it; clang's tables say pni).
_LINUX_ALIASES_X86 = {"pni": "sse3"}

# arm64: the hwcap flags NFD's cpu source reports on Linux (source/cpu/cpuid_linux_arm64.go), the
# kernel's names (/proc/cpuinfo's, archspec's) in upper case.
NFD_AARCH64 = frozenset({
    "FP", "ASIMD", "EVTSTRM", "AES", "PMULL", "SHA1", "SHA2", "CRC32", "ATOMICS", "FPHP", "ASIMDHP", "CPUID",
    "ASIMDRDM", "JSCVT", "FCMA", "LRCPC", "DCPOP", "SHA3", "SM3", "SM4", "ASIMDDP", "SHA512", "SVE", "ASIMDFHM",
    "DIT", "USCAT", "ILRCPC", "FLAGM", "SSBS", "SB", "PACA", "PACG",
    "DCPODP", "SVE2", "SVEAES", "SVEPMULL", "SVEBITPERM", "SVESHA3", "SVESM4", "FLAGM2", "FRINT", "SVEI8MM",
    "SVEF32MM", "SVEF64MM", "SVEBF16", "I8MM", "BF16", "DGH", "RNG", "BTI", "MTE", "ECV", "AFP", "RPRES", "MTE3",
    "SME", "SMEI16I64", "SMEF64F64", "SMEI8I32", "SMEF16F32", "SMEB16F32", "SMEF32F32", "SMEFA64", "WFXT",
    "EBF16", "SVEEBF16",
})
# klauspost/cpuid's own spellings of a few arm64 flags, which some NFD builds label: read, never written.
NFD_AARCH64_ALIASES = {"AESARM": "aes", "ARMCPUID": "cpuid", "FHM": "asimdfhm", "EVSTRM": "evtstrm"}

# nfd-worker's default sources.cpu.cpuid.attributeBlacklist: flags NFD does not *label* by default.
# They are still among its features, which validate-node checks; only labels lack them.
NFD_DEFAULT_DENYLIST = frozenset({
    "BMI1", "BMI2", "CLMUL", "CMOV", "CX16", "ERMS", "F16C", "HTT", "LZCNT", "MMX", "MMXEXT", "NX",
    "POPCNT", "RDRAND", "RDSEED", "RDTSCP", "SGX", "SGXLC", "SSE", "SSE2", "SSE3", "SSE4", "SSE42",
    "SSSE3", "TDX_GUEST",
})

# NFD vendor_id (klauspost/cpuid's vendor names) <-> archspec's vendor strings.
X86_VENDORS = {"Intel": "GenuineIntel", "AMD": "AuthenticAMD", "Hygon": "HygonGenuine"}

# What every binary of the family uses, which archspec lists for no target: the x86-64 psABI's
# baseline (CMOV, CX8, x87, FXSR, MMX, SSE, SSE2) and AArch64's FP and Advanced SIMD.
BASELINE = {"x86_64": ("cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2"), "aarch64": ("fp", "asimd")}

# aarch64 features archspec lists that are no instruction a compiler emits.
NOT_CODEGEN_AARCH64 = {
    "evtstrm": "the kernel's timer event stream: no instruction",
    "cpuid": "the kernel's emulation of ID register reads: no instruction the compiler emits",
}

_X86_TO_NFD = {linux: name for name, linux in NFD_X86.items()}


def nfd_name(feature: str, family: str) -> str | None:
    """NFD's ``cpu.cpuid`` name of a Linux/archspec feature, or None when NFD shows no such flag."""
    if family == "x86_64":
        return _X86_TO_NFD.get(_LINUX_ALIASES_X86.get(feature, feature))
    if family == "aarch64":
        return feature.upper() if feature.upper() in NFD_AARCH64 else None
    return None


def nfd_names(features: Iterable[str], family: str) -> set[str]:
    return {n for n in (nfd_name(f, family) for f in features) if n}


def known_flags(family: str) -> frozenset[str]:
    """The NFD flags :func:`nfd_name` can give for the family: what a host's /proc/cpuinfo can tell."""
    return frozenset(NFD_X86) if family == "x86_64" else NFD_AARCH64 if family == "aarch64" else frozenset()


def not_codegen(family: str) -> dict[str, str]:
    return targetmod.NOT_CODEGEN if family == "x86_64" else NOT_CODEGEN_AARCH64 if family == "aarch64" else {}


# -- what a target needs, as rules ------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    name: str                   # the NFD rule's name
    level: str                  # the archspec target whose features it adds
    features: tuple[str, ...]   # NFD cpu.cpuid names, sorted
    comment: str


@dataclass(frozen=True)
class Requirements:
    """What a binary baked for ``target`` needs of a CPU, level by level (lowest first)."""

    target: str
    family: str
    flags: tuple[str, ...]
    rules: tuple[Rule, ...]
    unchecked: tuple[str, ...] = ()              # codegen features no NFD flag shows (Linux names)
    ignored: dict[str, str] = field(default_factory=dict)   # target features no compiler emits -> why

    @property
    def features(self) -> set[str]:
        return {f for r in self.rules for f in r.features}


def requirements(target: str | targetmod.Target) -> Requirements:
    """The rules for the archspec target (a name or a resolved :class:`~bakery.target.Target`).

    One rule per ISA level of the target's lineage: the family's baseline, each generic level it
    descends from (x86_64_v2, v3, v4; armv8.x), then the target itself when it is an exact model.
    Each rule holds only what its level adds to the ones before; a node must match them all."""
    name = target if isinstance(target, str) else target.name
    flags = () if isinstance(target, str) else tuple(target.flags)
    try:
        t = archspec.cpu.TARGETS[name]
    except KeyError:
        raise BakeryError(f"unknown target {name!r}: not an archspec microarchitecture") from None
    family = t.family.name
    if family not in BASELINE:
        raise BakeryError(f"target {name} is {family}: image compatibility is written for x86_64 and aarch64")
    skip = not_codegen(family)

    def codegen(u) -> set[str]:
        return targetmod.codegen_features(u) - skip.keys()

    needs = codegen(t) | set(BASELINE[family])
    chain = sorted((a for a in [t, *t.ancestors] if a.vendor == "generic"), key=lambda a: len(a.ancestors))
    if t.vendor != "generic":
        chain.append(t)
    rules: list[Rule] = []
    seen: set[str] = set()
    unchecked: set[str] = set()
    for i, level in enumerate(chain):
        base = level.name == family
        own = set(BASELINE[family]) if base else codegen(level) & needs
        if level is chain[-1]:
            own |= needs - seen  # whatever the target needs that no level before named
        new = own - seen
        seen |= new
        names = nfd_names(new, family)
        unchecked |= {f for f in new if nfd_name(f, family) is None}
        if not names:
            continue
        if base:
            rule_name, comment = f"{family} baseline", f"the {family} ABI's baseline: every {family} binary uses these"
        elif level.vendor == "generic":
            rule_name, comment = level.name, f"what the ISA level {level.name} adds"
        else:
            before = next((c.name for c in reversed(chain[:i]) if c.vendor == "generic"), family)
            rule_name, comment = level.name, f"what {level.name} adds beyond {before}"
        rules.append(Rule(rule_name, level.name, tuple(sorted(names)), comment))
    ignored = {f: skip[f] for f in sorted(t.features & skip.keys())}
    return Requirements(t.name, family, flags, tuple(rules), tuple(sorted(unchecked)), ignored)


def document(req: Requirements) -> dict:
    """The compatibility spec as data: what :func:`render` writes, as NFD reads it."""
    return {
        "version": VERSION,
        "compatibilities": [{
            "description": _description(req),
            "rules": [{"name": r.name, "matchFeatures": [
                {"feature": CPUID_FEATURE, "matchExpressions": {f: {"op": "Exists"} for f in r.features}}]}
                for r in req.rules],
        }],
    }


def _description(req: Requirements) -> str:
    flags = f" ({' '.join(req.flags)})" if req.flags else ""
    return (f"CPU features the binaries of this bakery node tag use: archspec target {req.target}{flags}. "
            "A CPU without one of them stops the program with SIGILL.")


def _q(text: str) -> str:
    """A YAML double-quoted scalar: JSON's escapes are YAML's."""
    return json.dumps(text)


def render(req: Requirements) -> str:
    """The spec as YAML, commented for the person who pulls it (``oras pull``): NFD's layer is YAML."""
    out = [
        "# Image compatibility of a bakery node tag, in node-feature-discovery's format (v1alpha1):",
        f"# the CPU features its binaries were compiled to use, for the archspec target {req.target}"
        + (f" ({' '.join(req.flags)})." if req.flags else "."),
        "# One rule per ISA level, lowest first; a node must match every rule. Check a node with",
        "#   nfd compat validate-node --image <node tag>          (NFD's client, on the node)",
        "#   bakery check <node tag> [--node-labels node.json]    (this host, or NFD's node labels)",
        "# Format: https://kubernetes-sigs.github.io/node-feature-discovery/stable/usage/image-compatibility.html",
    ]
    if req.unchecked:
        out.append(f"# Used, but no NFD cpuid flag shows them (not checked): {', '.join(req.unchecked)}")
    if req.ignored:
        out.append("# Listed by archspec for the target, not required (no instruction the compiler emits):")
        out += [f"#   {f}: {why}" for f, why in req.ignored.items()]
    out += [
        "# No kernel rule: NFD reports AVX, AVX2 and AVX-512 only when the kernel has enabled their state.",
        f"version: {VERSION}",
        "compatibilities:",
        f"- description: {_q(_description(req))}",
        "  rules:",
    ]
    for r in req.rules:
        out += [f"  # {r.comment}", f"  - name: {_q(r.name)}", "    matchFeatures:",
                f"    - feature: {CPUID_FEATURE}", "      matchExpressions:"]
        out += [f"        {f}: {{op: Exists}}" for f in r.features]
    return "\n".join(out) + "\n"


# -- the artifact in the registry -------------------------------------------------------------------

def artifact_annotations(req: Requirements) -> dict[str, str]:
    """The artifact manifest's annotations: what it is, for whom, and what it leaves out."""
    ann = {
        "org.opencontainers.image.description":
            f"node-feature-discovery image compatibility (v1alpha1): the CPU features the binaries of "
            f"this node tag use (archspec target {req.target}); check a node with 'nfd compat validate-node' "
            "or 'bakery check'",
        f"{_ANN}.target": req.target,
        f"{_ANN}.compat.rules": ",".join(r.name for r in req.rules),
        f"{_ANN}.version": __version__,
    }
    if req.flags:
        ann[f"{_ANN}.target.flags"] = " ".join(req.flags)
    if req.unchecked:
        ann[f"{_ANN}.compat.unchecked"] = ",".join(req.unchecked)
    if req.ignored:
        ann[f"{_ANN}.compat.ignored"] = ",".join(req.ignored)
    return ann


def attach(reg: oci.Registry, repo: str, digest: str, target: str | targetmod.Target) -> str:
    """Attach the compatibility artifact of ``target`` to the manifest ``repo@digest`` (a node tag);
    returns the artifact's digest. The referrers tag schema is kept, so NFD and oras find it."""
    req = requirements(target)
    data, media_type, _ = reg.get_manifest(repo, digest)
    subject = {"mediaType": media_type, "digest": digest, "size": len(data)}
    with tempfile.TemporaryDirectory(prefix="bakery-compat-") as tmp:
        spec = Path(tmp) / SPEC_TITLE
        spec.write_text(render(req))
        return oci.attach(reg, repo, subject, ARTIFACT_TYPE, spec, SPEC_MEDIA_TYPE, title=SPEC_TITLE,
                          annotations=artifact_annotations(req))


def has_artifact(reg: oci.Registry, repo: str, digest: str) -> bool:
    return bool(reg.referrers(repo, digest, ARTIFACT_TYPE))


@dataclass(frozen=True)
class Artifact:
    digest: str                  # the artifact manifest's
    subject: str                 # the image manifest it is attached to
    annotations: dict[str, str]
    spec: dict
    text: str


def fetch(reg: oci.Registry, repo: str, subject: str) -> Artifact:
    """The newest compatibility artifact attached to ``repo@subject``, as validate-node takes it
    (the newest ``org.opencontainers.image.created``). Everything read is untrusted: its digests are
    checked, its size is bounded, and any shape other than the format's is refused in one line."""
    found = reg.referrers(repo, subject, ARTIFACT_TYPE)
    if not found:
        raise BakeryError(f"{reg.host}/{repo}@{subject} has no image compatibility artifact ({ARTIFACT_TYPE})",
                          "node tags pushed by this bakery have one; bake it again ('bakery bake' adds it "
                          "to an existing node tag)")
    found.sort(key=lambda m: m.get("annotations", {}).get("org.opencontainers.image.created", ""))
    digest = found[-1]["digest"]
    manifest = oci.json_object(reg.get_manifest(repo, digest)[0], f"compatibility artifact {digest}")
    about = manifest.get("subject")
    if not isinstance(about, dict) or about.get("digest") != subject:
        raise PlanRefused(f"compatibility artifact {digest} does not refer to {subject}")
    layers = [layer for layer in oci.descriptors(manifest.get("layers", []), f"compatibility artifact {digest}")
              if layer.get("mediaType") == SPEC_MEDIA_TYPE]
    if len(layers) != 1:
        raise PlanRefused(f"compatibility artifact {digest} has {len(layers)} layers of {SPEC_MEDIA_TYPE}, expected 1")
    raw = reg.get_blob(repo, layers[0]["digest"], max_size=MAX_SPEC_BYTES)
    ann = manifest.get("annotations")
    ann = {k: v for k, v in ann.items() if isinstance(v, str)} if isinstance(ann, dict) else {}
    text = raw.decode("utf-8", "replace")
    return Artifact(digest, subject, ann, parse(raw, f"compatibility artifact {digest}"), text)


def parse(raw: bytes | str, what: str = "the compatibility spec") -> dict:
    """A compatibility spec (YAML, or JSON, which is YAML) checked for the format's shape.
    YAML aliases are refused: an untrusted document could make them expand without bound."""
    import yaml

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("aliases are not accepted")
            return super().compose_node(parent, index)

    try:
        doc = yaml.load(raw, Loader=_NoAliases)  # a SafeLoader
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise PlanRefused(f"{what} is not YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(doc, dict):
        try:
            text = json.dumps(doc, default=str)
        except (TypeError, ValueError, RecursionError):
            raise PlanRefused(f"{what} holds values that are no JSON") from None
        oci.json_object(text.encode(), what)  # its depth and size bounded, as a manifest's
    problem = shape_problem(doc)
    if problem:
        raise PlanRefused(f"{what} is not an NFD image compatibility spec: {problem}")
    return doc


_OPS = ("In", "NotIn", "InRegexp", "Exists", "DoesNotExist", "Gt", "Ge", "Lt", "Le", "GtLt", "GeLe", "IsTrue",
        "IsFalse")


def shape_problem(doc) -> str | None:
    """What keeps ``doc`` from being a v1alpha1 spec as NFD reads it, or None (the structural
    check; tests/helpers.py holds the JSON schema written from NFD's documents)."""
    if not isinstance(doc, dict):
        return "not a mapping"
    if doc.get("version") != VERSION:
        return f"version is {doc.get('version')!r}, not {VERSION!r}"
    sets = doc.get("compatibilities")
    if not isinstance(sets, list) or not sets:
        return "'compatibilities' is not a non-empty list"
    for i, c in enumerate(sets):
        if not isinstance(c, dict) or not isinstance(c.get("rules"), list):
            return f"compatibilities[{i}] has no list of rules"
        for j, r in enumerate(c["rules"]):
            where = f"compatibilities[{i}].rules[{j}]"
            if not isinstance(r, dict) or not isinstance(r.get("name"), str):
                return f"{where} has no name"
            terms = list(r.get("matchFeatures") or [])
            for any_ in r.get("matchAny") or []:
                if not isinstance(any_, dict) or not isinstance(any_.get("matchFeatures"), list):
                    return f"{where}.matchAny: an element without matchFeatures"
                terms += any_["matchFeatures"]
            for t in terms:
                if not isinstance(t, dict) or not isinstance(t.get("feature"), str):
                    return f"{where}: a matchFeatures term without a feature"
                exprs = t.get("matchExpressions") or {}
                if not isinstance(exprs, dict):
                    return f"{where}: matchExpressions of {t['feature']} is not a mapping"
                for e in [*exprs.values(), *([t["matchName"]] if "matchName" in t else [])]:
                    if not isinstance(e, dict) or e.get("op") not in _OPS:
                        return f"{where}: {t['feature']}: an expression whose op is not one of {', '.join(_OPS)}"
                    if not all(isinstance(v, str) for v in e.get("value") or []):
                        return f"{where}: {t['feature']}: an expression's values are not strings"
    return None


# -- a node, and a spec checked against it -----------------------------------------------------

@dataclass
class Node:
    """What is known of a node's features, in NFD's names."""

    name: str
    source: str                              # "/proc/cpuinfo", "labels node.json"
    family: str | None
    cpuid: frozenset[str]                    # cpu.cpuid flags present
    model: dict[str, str] = field(default_factory=dict)   # cpu.model attributes known
    tellable: frozenset[str] | None = None   # the flags the source can show (None: any)
    hidden: frozenset[str] = frozenset()     # flags the source hides
    hidden_why: str = ""

    def untold(self, flag: str) -> str | None:
        """Why the source cannot tell whether ``flag`` is there, or None when it can."""
        if flag in self.hidden:
            return self.hidden_why
        if self.tellable is not None and flag not in self.tellable:
            return f"{self.source} cannot show them"
        return None


def host_node() -> Node:
    """This machine: archspec's reading of /proc/cpuinfo, in NFD's names."""
    from archspec.cpu import detect as asdetect

    family = asdetect._machine()
    info = asdetect.detected_info()
    vendor = {v: k for k, v in X86_VENDORS.items()}.get(info.vendor, info.vendor) if family == "x86_64" else info.vendor
    return Node(platform.node() or "this host", "/proc/cpuinfo", family, frozenset(nfd_names(info.features, family)),
                {"vendor_id": vendor} if vendor and vendor != "generic" else {}, known_flags(family))


def labels_node(name: str, labels: dict[str, str], source: str) -> Node:
    """A node from its NFD labels (``feature.node.kubernetes.io/cpu-cpuid.AVX2: "true"``).

    NFD does not label the flags of its default attributeBlacklist (BMI2, POPCNT, SSE4, ...): when
    no label of that list is there, the node runs that default, and those flags cannot be told."""
    flags = {k[len(CPUID):] for k, v in labels.items() if k.startswith(CPUID) and str(v).strip().lower() == "true"}
    if not flags:
        raise BadInput(f"node {name} has no {CPUID}* label set to true: are these node-feature-discovery's "
                       "labels (kubectl get node NAME -o json)?")
    model = {k[len(MODEL):]: str(v) for k, v in labels.items() if k.startswith(MODEL)}
    arch = labels.get("kubernetes.io/arch")
    family = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch or "") or \
        ("x86_64" if flags & set(NFD_X86) else "aarch64" if flags & NFD_AARCH64 else None)
    hidden = NFD_DEFAULT_DENYLIST if family == "x86_64" and not flags & NFD_DEFAULT_DENYLIST else frozenset()
    return Node(name, source, family, frozenset(flags), model, None, hidden,
                "NFD does not label them by default (attributeBlacklist)")


class BadInput(BakeryError):
    """Input bakery check cannot read (a labels file): a usage error."""

    exit_code = 2


@dataclass
class RuleResult:
    name: str
    ok: bool
    missing: list[str] = field(default_factory=list)       # features the node lacks (or has, for DoesNotExist)
    untold: dict[str, str] = field(default_factory=dict)   # features the source cannot tell -> why
    unsupported: list[str] = field(default_factory=list)   # terms bakery check does not evaluate

    def line(self) -> str:
        if self.unsupported:
            text = f"{self.name}: not checked here: {'; '.join(self.unsupported)}"
        elif self.ok:
            text = f"{self.name}: ok"
        else:
            text = f"{self.name}: missing {', '.join(self.missing)}"
        if self.untold:
            whys = sorted(set(self.untold.values()))
            text += f" (unverifiable: {', '.join(sorted(self.untold))}: {'; '.join(whys)})"
        return text

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "missing": self.missing, "unverifiable": self.untold,
                "unsupported": self.unsupported}


def _term(term: dict, node: Node, res: RuleResult) -> bool:
    feature = term["feature"]
    if term.get("matchName") is not None:
        res.unsupported.append(f"{feature} matchName")
        return False
    exprs = term.get("matchExpressions") or {}
    ok = True
    for name, e in exprs.items():
        op, values = e.get("op"), [str(v) for v in e.get("value") or []]
        if feature == CPUID_FEATURE and op in ("Exists", "DoesNotExist"):
            why = node.untold(name)
            if why:
                res.untold[name] = why
                continue
            if (name in node.cpuid) != (op == "Exists"):
                res.missing.append(name if op == "Exists" else f"{name} (must be absent)")
                ok = False
        elif feature == MODEL_FEATURE and op in ("In", "NotIn", "Exists", "DoesNotExist"):
            if name not in node.model:
                res.untold[f"{feature}.{name}"] = f"{node.source} does not say"
                continue
            have = node.model[name]
            good = {"In": have in values, "NotIn": have not in values, "Exists": True, "DoesNotExist": False}[op]
            if not good:
                res.missing.append(f"{feature}.{name} {op} {values} (is {have})")
                ok = False
        else:
            res.unsupported.append(f"{feature} {name} {op}")
            ok = False
    return ok


def evaluate(spec: dict, node: Node) -> list[RuleResult]:
    """Each rule of every compatibility set checked against ``node``: a rule holds when all its
    matchFeatures terms hold and, if it has matchAny, one of those. bakery evaluates ``cpu.cpuid``
    flags (Exists, DoesNotExist) and ``cpu.model`` attributes (In, NotIn, Exists, DoesNotExist);
    any other term is reported as not checked (and fails): ``nfd compat validate-node`` runs them."""
    out = []
    for c in spec["compatibilities"]:
        for r in c["rules"]:
            res = RuleResult(r["name"], True)
            ok = all([_term(t, node, res) for t in r.get("matchFeatures") or []])
            alternatives = r.get("matchAny") or []
            if alternatives:
                tried = [RuleResult(r["name"], True) for _ in alternatives]
                fits = [all([_term(t, node, x) for t in a["matchFeatures"]]) for a, x in zip(alternatives, tried, strict=True)]
                if not any(fits):
                    ok = False
                    res.missing.append(" or ".join("+".join(x.missing) or "?" for x in tried))
                    res.unsupported += [u for x in tried for u in x.unsupported]
                for x in tried:
                    res.untold.update(x.untold)
            res.ok = ok and not res.unsupported
            out.append(res)
    return out
