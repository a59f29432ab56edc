"""bakery publish: one tag for every CPU, as an OCI image index that runtimes resolve themselves.

The index at REF lists, per platform, the self-finishing IR image with no variant (the fallback:
it bakes for any CPU it lands on) and the bakes of the ISA levels as variants (``linux/amd64``
``v2``/``v3``/``v4``, ``linux/arm64`` ``v8``): containerd takes the highest level the host has,
``podman --variant`` and ``skopeo --override-variant`` the one asked for, and a runtime that
asks for no variant takes the first entry of its architecture, the IR image. Exact models
(zen4, neoverse_v2) are baked as tags but stay out of the index, where a runtime could take one
for another CPU of the same level.

The IR image stays reachable under ``REF-ir`` and by digest. Every entry carries what it is
(``dev.bakery.role``), its archspec target, the target's flags and the IR image it was baked
from. The index is pushed last, in one PUT, so a reader sees the old index or the new one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from bakery import oci
from bakery.engines.base import ContainerEngine
from bakery.errors import BakeryError
from bakery.images import node as nodemod
from bakery.images.ir import ANN, ROLE
from bakery.platforms import VARIANT_OF_TARGET, by_family

log = logging.getLogger(__name__)

PUBLISHED = f"{ANN}.published"   # on the index: bakery wrote it
TARGET, FLAGS, IR_DIGEST = f"{ANN}.target", f"{ANN}.target.flags", f"{ANN}.ir.digest"


@dataclass
class PublishResult:
    ref: str
    digest: str                                    # the index's
    ir: str                                        # REF-ir
    entries: list[dict] = field(default_factory=list)   # platform, variant, target, digest
    tags: list[str] = field(default_factory=list)       # exact models: tags, not in the index

    def to_json(self) -> dict:
        return self.__dict__.copy()


def ir_tag(tag: str) -> str:
    return f"{tag}-ir"


def publish(text: str, targets: list[str], registry: str, engine: ContainerEngine | None, *, jobs: int = 0,
            tls_verify: bool | None = None, timeout: float | None = None) -> PublishResult:
    ref = oci.Ref.parse(text, default_registry=registry)
    if not ref.tag or ref.digest:
        raise BakeryError(f"{text}: publish needs a tag (REPO:TAG) to write the index at")
    if not targets:
        raise BakeryError("--targets names no target")
    reg = oci.Registry(ref.registry, tls_verify=oci.tls_default(ref.registry, tls_verify))
    irs, old = _current(reg, ref)
    # The IR stays reachable by a tag of its own before the index takes REF.
    ir_bytes, ir_type = _ir_manifest(irs)
    reg.put_manifest(ref.repository, ir_tag(ref.tag), ir_bytes, ir_type)
    keep = {e["annotations"][TARGET]: e for e in old if e["annotations"].get(IR_DIGEST) in {d["digest"] for d in irs}}
    result = PublishResult(str(ref), "", f"{ref.registry}/{ref.repository}:{ir_tag(ref.tag)}")
    for name in targets:
        # From REF: an index published before gives its IR entries (images.node.resolve_ir), and
        # the node tags keep REF's name (1.0-x86_64_v3).
        baked = nodemod.bake(str(ref), engine, registry, name, jobs=jobs, tls_verify=tls_verify, timeout=timeout)
        target = baked.target["name"]
        if target not in VARIANT_OF_TARGET:
            log.info(f"publish: {target} is an exact model: a tag of its own ({baked.ref}), not in the index")
            result.tags.append(baked.ref)
            continue
        data, media_type, digest = reg.get_manifest(ref.repository, baked.digest)
        arch, variant = VARIANT_OF_TARGET[target]
        manifest = oci.json_object(data, f"the node tag {baked.ref}")
        made_from = (manifest.get("annotations") or {}).get(IR_DIGEST, "")
        keep[target] = {"mediaType": media_type, "digest": digest, "size": len(data),
                        "platform": {"architecture": arch, "os": "linux", "variant": variant},
                        "annotations": {ROLE: "bake", TARGET: target, FLAGS: " ".join(baked.target["flags"]),
                                        IR_DIGEST: made_from}}
    entries = [{**d, "annotations": {**d.get("annotations", {}), ROLE: "ir"}} for d in irs]
    order = list(VARIANT_OF_TARGET)
    entries += [keep[t] for t in sorted(keep, key=order.index)]
    index = {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": entries,
             "annotations": {PUBLISHED: "1"}}
    data = json.dumps(index, indent=1, sort_keys=True).encode()
    result.digest = reg.put_manifest(ref.repository, ref.tag, data, oci.INDEX) or oci.sha256(data)
    result.entries = [{"platform": f"{e['platform']['os']}/{e['platform']['architecture']}",
                       "variant": e["platform"].get("variant", ""), "role": e["annotations"][ROLE],
                       "target": e["annotations"].get(TARGET, ""), "digest": e["digest"]} for e in entries]
    log.info(f"publish: {ref} -> {len(entries)} entries ({', '.join(_label(e) for e in result.entries)})")
    return result


def _label(e: dict) -> str:
    return e["target"] or f"{e['platform']} IR"


def _current(reg: oci.Registry, ref: oci.Ref) -> tuple[list[dict], list[dict]]:
    """(the IR images' descriptors, each with its platform; the bake entries of an index
    published before) for REF, or its REF-ir when REF is a published index already."""
    digest = reg.head_manifest(ref.repository, ref.reference)
    if not digest:
        raise BakeryError(f"{ref} not found in the registry", "build it with 'bakery build RECIPE --push'")
    data, media_type, digest = reg.get_manifest(ref.repository, digest)
    doc = oci.json_object(data, f"the manifest of {ref}")
    if media_type not in (oci.INDEX, oci.DOCKER_LIST):
        family = _family_of(reg, ref, digest)
        plat = {"architecture": by_family(family).arch, "os": "linux"}
        return [{"mediaType": media_type, "digest": digest, "size": len(data), "platform": plat}], []
    entries = oci.descriptors(doc.get("manifests"), f"the index {ref}")
    published = (doc.get("annotations") or {}).get(PUBLISHED) == "1"
    irs, bakes = [], []
    for e in entries:
        if not isinstance(e.get("platform"), dict):
            raise BakeryError(f"the index {ref} has an entry without a platform ({e['digest'][:19]}…)")
        role = (e.get("annotations") or {}).get(ROLE)
        if published and role == "bake" and (e.get("annotations") or {}).get(TARGET) in VARIANT_OF_TARGET:
            bakes.append(e)
        elif not published or role == "ir":
            irs.append({k: e[k] for k in ("mediaType", "digest", "size", "platform") if k in e})
    if not irs:
        raise BakeryError(f"the index {ref} lists no IR image")
    return irs, bakes


def _family_of(reg: oci.Registry, ref: oci.Ref, digest: str) -> str:
    """The ISA family of a single IR image: its plan's."""
    _, plan, _ = nodemod.resolve_ir(reg, ref.with_digest(digest))
    return plan.toolchain.family


def _ir_manifest(irs: list[dict]) -> tuple[bytes, str]:
    """What REF-ir points at: an index of the IR images (one per platform)."""
    index = {"schemaVersion": 2, "mediaType": oci.INDEX,
             "manifests": [{k: d[k] for k in ("mediaType", "digest", "size", "platform")} for d in irs]}
    return json.dumps(index, indent=1, sort_keys=True).encode(), oci.INDEX
