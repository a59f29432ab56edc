"""Node tags through the registry's HTTP API alone: no container engine, nothing of the image runs.

For a bakery that already runs inside its own toolchain container (``bakery serve`` in a
Kubernetes pod, which then needs no privileged container; ``--engine none``):

* the bundle is read out of the IR image's layer blobs as data: the topmost layer that holds
  ``bakery/bundle/`` is streamed to a temporary file (digest checked, size bounded) and only
  regular files and folders below that path are extracted (:func:`bakery.safefs.extract_tar`);
  every file is then checked against the plan, as for any bundle;
* the bake runs here, with this machine's (this container's) LLVM;
* the outputs become one gzip'd layer (``usr/local/bin/<name>``, root-owned, mtime 0), pushed
  with a config and a manifest that are the IR image's (or the slim base's) plus that layer:
  blobs first, the manifest last, so an interrupted push never leaves the tag.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from bakery import oci, safefs
from bakery.errors import BakeryError, PlanRefused

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_TAR_TYPES = {"application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar"}
_GZIP_TYPES = {LAYER_GZIP, DOCKER_LAYER_GZIP}
MAX_LAYER = 8 << 30


def _manifest(reg: oci.Registry, repo: str, digest: str, what: str) -> dict:
    data, _, _ = reg.get_manifest(repo, digest)
    doc = oci.json_object(data, what)
    oci.descriptors(doc.get("layers"), what)
    if not isinstance(doc.get("config"), dict) or not isinstance(doc["config"].get("digest"), str):
        raise PlanRefused(f"{what} has no config descriptor")
    return doc


def export_bundle(reg: oci.Registry, repo: str, digest: str, path: str, dest: Path, *,
                  limits: safefs.Limits = safefs.Limits()) -> None:
    """The folder ``path`` (e.g. /bakery/bundle) of the image ``repo@digest``, from its topmost
    layer that has it, to ``dest`` (must not exist)."""
    prefix = PurePosixPath(path.strip("/"))
    manifest = _manifest(reg, repo, digest, f"the IR image {repo}@{digest[:19]}")
    for layer in reversed(manifest["layers"]):
        if extract_layer(reg, repo, layer, dest, str(prefix), limits=limits, what="the IR image") is not None:
            return
        dest.rmdir()  # nothing of the bundle in this layer: the next one down
    raise PlanRefused(f"the IR image has no {path}")


def extract_layer(reg: oci.Registry, repo: str, layer: dict, dest: Path, strip: str, *,
                  limits: safefs.Limits = safefs.Limits(), what: str = "the image") -> int | None:
    """The files below ``strip`` of one layer (a descriptor) into ``dest`` (must not exist), the
    blob's digest and size checked: regular files and folders only (:func:`safefs.extract_tar`).
    Returns the bytes written, or None when nothing of the layer lay below ``strip``."""
    mt = layer.get("mediaType", LAYER_GZIP)
    if mt not in _GZIP_TYPES | _TAR_TYPES:
        raise PlanRefused(f"{what}'s layer {layer['digest'][:19]} is {mt}: only tar and tar+gzip are read")
    with tempfile.TemporaryFile(prefix="bakery-layer-") as f:
        reg.download_blob(repo, layer["digest"], f, max_size=MAX_LAYER)
        f.seek(0)
        try:
            return safefs.extract_tar(gzip.GzipFile(fileobj=f) if mt in _GZIP_TYPES else f, dest,
                                      strip=strip, others="skip", limits=limits, what=what)
        except (tarfile.TarError, OSError, EOFError) as e:  # a broken tar or gzip stream
            raise PlanRefused(f"{what}'s layer {layer['digest'][:19]} is not a readable tar archive ({e})") from None


def layer_of(files: list[Path], bindir: str) -> tuple[bytes, str]:
    """(gzip'd layer, its diff id): the files at ``bindir``/<name>, 0755, root, mtime 0."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        parts = PurePosixPath(bindir.strip("/")).parts
        for i in range(1, len(parts) + 1):
            d = tarfile.TarInfo("/".join(parts[:i]))
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
            tf.addfile(d)
        for f in sorted(files, key=lambda p: p.name):
            ti = tarfile.TarInfo("/".join([*parts, f.name]))
            ti.size, ti.mode, ti.mtime = f.stat().st_size, 0o755, 0
            with f.open("rb") as fh:
                tf.addfile(ti, fh)
    data = raw.getvalue()
    return gzip.compress(data, mtime=0), "sha256:" + hashlib.sha256(data).hexdigest()


def push_node(reg: oci.Registry, repo: str, base_repo: str, base_digest: str, files: list[Path], tag: str, *,
              bindir: str, entrypoint: list[str] | None, annotations: dict[str, str], labels: dict[str, str],
              base_reg: oci.Registry | None = None) -> str:
    """Push ``base`` + one layer of ``files`` as ``repo:tag``; returns the manifest digest."""
    base_reg = base_reg or reg
    manifest = _manifest(base_reg, base_repo, base_digest, f"{base_repo}@{base_digest[:19]}")
    config = oci.json_object(base_reg.get_blob(base_repo, manifest["config"]["digest"]), "the image config")
    docker = manifest.get("mediaType") == oci.DOCKER_MANIFEST
    blob, diff_id = layer_of(files, bindir)
    with tempfile.TemporaryDirectory(prefix="bakery-push-") as tmp:
        layer_file = Path(tmp) / "layer"
        layer_file.write_bytes(blob)
        if base_reg is not reg or base_repo != repo:  # a slim base from elsewhere: its blobs come along
            for d in manifest["layers"]:
                if not reg.blob_exists(repo, d["digest"]):
                    blob_file = Path(tmp) / "base-layer"
                    with blob_file.open("wb") as fh:
                        base_reg.download_blob(base_repo, d["digest"], fh, max_size=MAX_LAYER)
                    reg.push_blob(repo, blob_file, d.get("mediaType", LAYER_GZIP))
                    blob_file.unlink()
        layer = reg.push_blob(repo, layer_file, DOCKER_LAYER_GZIP if docker else LAYER_GZIP)
        new = copy.deepcopy(config)
        cfg = new.setdefault("config", {})
        if not isinstance(cfg, dict) or not isinstance(new.get("rootfs"), dict) or \
                not isinstance(new["rootfs"].get("diff_ids"), list):
            raise PlanRefused("the image config has no rootfs diff_ids")
        new["rootfs"]["diff_ids"].append(diff_id)
        if entrypoint is not None:
            cfg["Entrypoint"], cfg["Cmd"] = entrypoint, None
        cfg["Labels"] = {**(cfg.get("Labels") or {}), **labels}
        hist: list = new["history"] if isinstance(new.get("history"), list) else []
        new["history"] = [*hist, {"created_by": "bakery bake (registry API)", "comment": "baked outputs"}]
        config_file = Path(tmp) / "config"
        config_file.write_bytes(json.dumps(new, separators=(",", ":")).encode())
        cdesc = reg.push_blob(repo, config_file, manifest["config"].get("mediaType", "application/vnd.oci.image.config.v1+json"))
    out = {k: v for k, v in manifest.items() if k not in ("layers", "config", "annotations", "subject")}
    out["config"] = cdesc
    out["layers"] = [*manifest["layers"], layer]
    if not docker:
        out["annotations"] = {**(manifest.get("annotations") or {}), **annotations}
    data = json.dumps(out, separators=(",", ":")).encode()
    mt = manifest.get("mediaType") or oci.MANIFEST
    return reg.put_manifest(repo, tag, data, mt)


def toolchain_here(major: int):
    """This machine's LLVM, which a registry-only bake runs (it is bakery's own container)."""
    from bakery import toolchain as toolchainmod

    try:
        return toolchainmod.find(major)
    except BakeryError as e:
        raise BakeryError(f"--engine none bakes with this machine's LLVM {major}: {e.message}", e.hint) from None


def in_container() -> bool:
    """True inside a container (a Kubernetes pod, podman, docker): where a registry-only bake's
    processes are confined by the container around bakery."""
    return os.path.exists("/run/.containerenv") or os.path.exists("/.dockerenv") or \
        bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
