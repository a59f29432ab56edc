"""Profiles of IR images: an OCI artifact (``application/vnd.bakery.profile.v1``) attached to the
IR image as a referrer, which node bakes (``bakery bake IMAGE``, serve) find and bake with.

The artifact's one layer is the merged ``.profdata``; its annotations carry the IR it was made
on (the plan's digest), the training runs and the toolchain. Like the plan, it is untrusted: its
size is bounded, its digest checked, its IR must be the image's, and only opt/clang read it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bakery import oci
from bakery.bake import profile as profilemod
from bakery.errors import BakeryError
from bakery.images.ir import ANN

log = logging.getLogger(__name__)

ARTIFACT = profilemod.MEDIA_TYPE
LAYER = "application/vnd.bakery.profile.profdata.v1"
IR, DIGEST, RUNS = f"{ANN}.profile.ir", f"{ANN}.profile.digest", f"{ANN}.profile.runs"


def push(reg: oci.Registry, repo: str, ir_digest: str, folder: Path) -> str:
    """Attach the profile in ``folder`` (made by ``bakery profile``) to the IR image ``ir_digest``."""
    record = json.loads((folder / profilemod.RECORD).read_text())
    data, media_type, _ = reg.get_manifest(repo, ir_digest)
    subject = {"mediaType": media_type, "digest": ir_digest, "size": len(data)}
    return oci.attach(reg, repo, subject, ARTIFACT, folder / profilemod.PROFDATA, LAYER, title=profilemod.PROFDATA,
                      annotations={IR: record["ir"], DIGEST: record["profile"], RUNS: json.dumps(record["runs"]),
                                   f"{ANN}.profile.toolchain": record["toolchain"]})


def fetch(reg: oci.Registry, repo: str, ir_digest: str, plan_digest: str, dest: Path) -> str | None:
    """The newest profile attached to the IR image, in ``dest`` (a .profdata), when it was made on
    this plan; returns its digest, or None (none, or made on another IR: a note)."""
    found = reg.referrers(repo, ir_digest, ARTIFACT)
    if not found:
        return None
    found.sort(key=lambda m: m.get("annotations", {}).get("org.opencontainers.image.created", ""))
    artifact = found[-1]["digest"]
    manifest = oci.json_object(reg.get_manifest(repo, artifact)[0], f"profile artifact {artifact}")
    about = manifest.get("subject")
    ann = manifest.get("annotations")
    if not isinstance(about, dict) or about.get("digest") != ir_digest or not isinstance(ann, dict):
        raise BakeryError(f"profile artifact {artifact} does not refer to {ir_digest}")
    if ann.get(IR) != plan_digest:
        log.warning(f"bake: the profile attached to {repo}@{ir_digest[:19]}… was made on another IR: "
                    "baking without it")
        return None
    layers = [l for l in oci.descriptors(manifest.get("layers", []), f"profile artifact {artifact}")
              if l.get("mediaType") == LAYER]
    if len(layers) != 1:
        raise BakeryError(f"profile artifact {artifact} has {len(layers)} profile layers, expected 1")
    blob = reg.get_blob(repo, layers[0]["digest"], max_size=profilemod.MAX_BYTES)  # digest-checked
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(blob)
    return layers[0]["digest"]
