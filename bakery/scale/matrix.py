"""Bake a matrix of (recipe, target) pairs on Ray.

Two phases, each a set of idempotent Ray tasks:

1. **IR images**, one task per recipe. The IR image ``<registry>/<name>:<version>``
   is reused when it exists with the same inputs digest (its manifest annotation
   ``dev.bakery.inputs.digest``: the recipe file and its local source trees) and
   its plan artifact; otherwise it is built and
   pushed (``image.build``). Building the same IR image twice at once is never
   done (one task per recipe), and the first build of each base-image set runs
   before the others, so base images are made once.
2. **Node tags**, one task per distinct (recipe, target) after the target is
   resolved for the recipe's toolchain (two names clamped to one target bake
   once). ``image.bake`` reuses a node tag that exists, so a rerun bakes nothing.

At most ``parallel`` tasks run at once. Every failure is kept with its pair; the
run goes on with the rest. Workers get the driver's PATH, BAKERY_*, BUILDAH_*,
XDG_* and container auth variables through Ray's runtime_env, and the registry
address explicitly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakery.errors import BakeryError

log = logging.getLogger(__name__)

ANN_INPUTS = "dev.bakery.inputs.digest"

ENV_PREFIXES = ("BAKERY_", "BUILDAH_", "CONTAINERS_", "XDG_", "DOCKER_", "REGISTRY_AUTH_FILE", "STORAGE_")
ENV_NAMES = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "REGISTRY_AUTH_FILE")


def worker_env() -> dict[str, str]:
    """The variables Ray workers must share with the driver."""
    return {k: v for k, v in os.environ.items() if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}


@dataclass
class IRResult:
    recipe: str                 # the recipe file, as given
    name: str = ""
    ref: str = ""               # <registry>/<name>:<version>@sha256:...
    digest: str = ""
    status: str = "failed"      # built | reused | failed
    seconds: float = 0.0
    toolchain: dict = field(default_factory=dict)
    error: str = ""


@dataclass
class PairResult:
    recipe: str
    target: str                 # as requested
    resolved: str = ""          # the archspec target baked (after clamping)
    ref: str = ""
    digest: str = ""
    status: str = "failed"      # baked | reused | failed
    seconds: float = 0.0
    error: str = ""
    note: str = ""


def _error_text(e: BaseException) -> str:
    if isinstance(e, BakeryError):
        text = e.message
        if getattr(e, "hint", None):
            text += f" ({e.hint})"
        return text
    return f"{type(e).__name__}: {e}"


def _tls(registry: str, tls_verify: bool | None) -> bool:
    from bakery import oci

    return oci.tls_default(registry, tls_verify)


def _manifest_annotations(reg, repo: str, digest: str) -> dict:
    from bakery import oci

    data, mt, _ = reg.get_manifest(repo, digest)
    doc = json.loads(data)
    ann = dict(doc.get("annotations") or {})
    if mt in (oci.INDEX, oci.DOCKER_LIST) and ANN_INPUTS not in ann and doc.get("manifests"):
        first = doc["manifests"][0]["digest"]
        ann.update(json.loads(reg.get_manifest(repo, first)[0]).get("annotations") or {})
    return ann


def existing_ir(recipe, registry: str, tls_verify: bool | None = None) -> str | None:
    """``<ref>@<digest>`` of the IR image when it exists for this very recipe (digest) with its plan."""
    from bakery import images as imagemod
    from bakery import oci
    from bakery.capture import sources as sourcesmod

    ref = oci.Ref.parse(f"{recipe.name}:{recipe.version}", default_registry=registry)
    reg = oci.Registry(ref.registry, tls_verify=_tls(ref.registry, tls_verify))
    digest = reg.head_manifest(ref.repository, ref.reference)
    if not digest:
        return None
    if _manifest_annotations(reg, ref.repository, digest).get(ANN_INPUTS) != sourcesmod.inputs_digest(recipe):
        return None  # another recipe, or the same recipe over a changed local source tree
    try:
        imagemod.resolve_ir(reg, ref.with_digest(digest))
    except BakeryError:
        return None  # no plan artifact (an interrupted build): build again
    return f"{ref}@{digest}"


def _toolchain(ir_ref: str, registry: str, tls_verify: bool | None) -> dict:
    from bakery import images as imagemod
    from bakery import oci

    ref = oci.Ref.parse(ir_ref)
    reg = oci.Registry(ref.registry, tls_verify=_tls(ref.registry, tls_verify))
    _, plan, _ = imagemod.resolve_ir(reg, ref)
    tc = plan.toolchain
    return {"family": tc.family, "version": tc.version, "llvm_major": tc.llvm_major}


def ir_task(recipe_path: str, registry: str, engine_name: str | None = None, tls_verify: bool | None = None,
            rebuild: bool = False, debug: bool = False) -> dict:
    """Phase 1: the recipe's IR image, reused or built. Never raises: errors are in the result."""
    from bakery import engines as enginemod
    from bakery import images as imagemod
    from bakery import recipe as recipemod
    from bakery import toolchain as toolchainmod

    t0 = time.monotonic()
    res = IRResult(recipe_path)
    try:
        recipe = recipemod.load(recipe_path)
        res.name = recipe.name
        found = None if rebuild else existing_ir(recipe, registry, tls_verify)
        if found:
            res.ref, res.status = found, "reused"
        else:
            built = imagemod.build(recipe, enginemod.get(engine_name), registry,
                                   llvm=toolchainmod.default_major(), tls_verify=tls_verify)
            res.ref, res.status = built.ref, "built"
        res.digest = res.ref.rsplit("@", 1)[-1]
        res.toolchain = _toolchain(res.ref, registry, tls_verify)
    except Exception as e:  # noqa: BLE001 - reported per recipe
        _failed(res, e, debug)
    res.seconds = round(time.monotonic() - t0, 2)
    return asdict(res)


def bake_task(ir_ref: str, target: str, registry: str, engine_name: str | None = None,
              tls_verify: bool | None = None, jobs: int = 0, slim: bool = False, debug: bool = False) -> dict:
    """Phase 2: one node tag, reused when it exists. Never raises: errors are in the result."""
    from bakery import engines as enginemod
    from bakery import images as imagemod

    t0 = time.monotonic()
    res = PairResult("", target, target)
    try:
        out = imagemod.bake(ir_ref, enginemod.get(engine_name), registry, target, slim=slim, jobs=jobs, tls_verify=tls_verify)
        res.ref, res.digest = out.ref, out.digest
        res.resolved = out.target.get("name", target)
        res.status = "reused" if out.reused else "baked"
    except Exception as e:  # noqa: BLE001 - reported per pair
        _failed(res, e, debug)
    res.seconds = round(time.monotonic() - t0, 2)
    return asdict(res)


def _failed(res, e: Exception, debug: bool) -> None:
    """A task never raises: its error is in its result (with the traceback under --debug)."""
    res.status, res.error = "failed", _error_text(e)
    if debug:
        res.error += "\n" + traceback.format_exc()


# -- the driver ----------------------------------------------------------------------------

@dataclass
class MatrixResult:
    registry: str
    ir: list[dict]
    pairs: list[dict]
    seconds: float

    @property
    def counts(self) -> dict:
        def n(rows, status):
            return sum(1 for r in rows if r["status"] == status)

        primary = [p for p in self.pairs if not p.get("note")]
        return {"ir_built": n(self.ir, "built"), "ir_reused": n(self.ir, "reused"), "ir_failed": n(self.ir, "failed"),
                "baked": n(primary, "baked"), "reused": n(primary, "reused"), "failed": n(self.pairs, "failed"),
                "pairs": len(self.pairs)}

    @property
    def ok(self) -> bool:
        return not any(r["status"] == "failed" for r in self.ir + self.pairs)

    def to_json(self) -> dict:
        return {"registry": self.registry, "ir": self.ir, "pairs": self.pairs, "counts": self.counts,
                "seconds": round(self.seconds, 2), "ok": self.ok}


class _Runner:
    """Submits tasks with at most ``parallel`` in flight; collects results in completion order."""

    def __init__(self, ray, parallel: int, progress):
        self.ray, self.parallel, self.progress = ray, max(1, parallel), progress

    def run(self, fn, calls: list[tuple[tuple, str]]) -> list[dict]:
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = list(enumerate(calls))
        running: dict = {}
        results: list[dict | None] = [None] * len(calls)
        while pending or running:
            while pending and len(running) < self.parallel:
                i, (args, label) = pending.pop(0)
                running[remote.remote(*args)] = (i, label)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i, label = running.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a worker that died
                    results[i] = {"status": "failed", "error": f"task failed: {_error_text(e)}", "seconds": 0.0}
                if self.progress is not None:
                    self.progress.set_postfix_str(f"{label}: {results[i]['status']}", refresh=False)
                    self.progress.update(1)
        return results  # type: ignore[return-value]


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast when a Ray address (host:port or ray://host:port) does not answer."""
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # let Ray interpret it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise BakeryError(f"the Ray cluster at {address} does not answer ({e})",
                          "check --ray-address (the head's host:6379, or ray://host:10001)") from None


def _init_ray(address: str | None, num_cpus: int):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise BakeryError("bakery matrix needs Ray", "pip install 'bakery[ray]' (or: pip install ray)") from None
    env = worker_env()
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
              runtime_env={"env_vars": env}, ignore_reinit_error=True)
    if address:
        _probe(address)  # Ray itself retries an unreachable cluster for minutes
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(address="local", num_cpus=num_cpus, **kw)  # a new instance, never a `ray start` one
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise BakeryError(f"could not start {where}: {e}",
                          "check --ray-address (host:6379 or ray://host:10001)" if address else None) from None
    return ray


@dataclass(frozen=True)
class _Options:
    """What every task of one matrix run is given."""

    registry: str
    engine: str | None
    tls_verify: bool | None
    jobs: int
    slim: bool
    rebuild: bool
    debug: bool


def run(recipes: list[str], targets: list[str], registry: str, *, engine: str | None = None,
        tls_verify: bool | None = None, ray_address: str | None = None, parallel: int = 2, jobs: int = 0,
        slim: bool = False, rebuild: bool = False, num_cpus: int = 2, debug: bool = False) -> MatrixResult:
    t0 = time.monotonic()
    recipes = _check(recipes, targets)
    opts = _Options(registry, engine, tls_verify, jobs if jobs > 0 else max(1, (os.cpu_count() or 1) // max(1, parallel)),
                    slim, rebuild, debug)
    ray = _init_ray(ray_address, num_cpus)
    progress = None
    try:
        from tqdm import tqdm

        progress = tqdm(total=len(recipes) + len(recipes) * len(targets), desc="matrix", unit="task",
                        disable=not log.isEnabledFor(logging.INFO), file=sys.stderr, dynamic_ncols=True, leave=True)
        runner = _Runner(ray, parallel, progress)
        ir = _build_irs(runner, recipes, opts, progress)
        pairs, calls, owners, skipped = _plan_bakes(ir, targets, opts)
        progress.update(skipped)
        progress.set_description("node tags")
        _record_bakes(pairs, owners, runner.run(bake_task, calls))
        progress.set_description("done")
    finally:
        if progress is not None:
            progress.close()
        ray.shutdown()  # stops the embedded Ray; with --ray-address, disconnects (the cluster stays up)
    return MatrixResult(registry, ir, pairs, time.monotonic() - t0)


def _check(recipes: list[str], targets: list[str]) -> list[str]:
    """Unknown targets and repeated recipes fail before anything runs; recipes as absolute paths."""
    from bakery import target as targetmod

    if not recipes or not targets:
        raise BakeryError("a matrix needs at least one recipe and one target")
    for name in targets:
        targetmod.lookup(name)
    recipes = [str(Path(r).resolve()) for r in recipes]
    if len(set(recipes)) != len(recipes):
        raise BakeryError("a recipe is named twice")
    return recipes


def _waves(recipes: list[str]) -> tuple[list[int], list[int]]:
    """The first IR build of each base-image set runs alone, so base images are made once."""
    from bakery import recipe as recipemod

    keys: dict[str, list[int]] = {}
    for i, path in enumerate(recipes):
        try:
            key = recipemod.load(path).runtime_base or ""
        except BakeryError:
            key = f"unloadable-{i}"
        keys.setdefault(key, []).append(i)
    return [ix[0] for ix in keys.values()], [i for ix in keys.values() for i in ix[1:]]


def _build_irs(runner: _Runner, recipes: list[str], opts: _Options, progress) -> list[dict]:
    ir: list[dict] = [{}] * len(recipes)
    for wave in _waves(recipes):
        if not wave:
            continue
        progress.set_description("IR images")
        out = runner.run(ir_task, [((recipes[i], opts.registry, opts.engine, opts.tls_verify, opts.rebuild, opts.debug),
                                    Path(recipes[i]).parent.name) for i in wave])
        for i, r in zip(wave, out, strict=True):
            r.setdefault("recipe", recipes[i])
            ir[i] = r
    return ir


def _plan_bakes(ir: list[dict], targets: list[str], opts: _Options):
    """A row per (recipe, target); each target resolved for its recipe's toolchain, and each distinct
    node tag baked once: (rows, bake calls, the rows each call answers, rows settled without a bake)."""
    from bakery import target as targetmod

    pairs: list[dict] = []
    unique: dict[tuple[str, str], int] = {}
    calls: list[tuple[tuple, str]] = []
    owners: list[list[int]] = []
    skipped = 0
    for r in ir:
        label = r.get("name") or r["recipe"]
        for name in targets:
            row = asdict(PairResult(label, name))
            pairs.append(row)
            if r["status"] == "failed":
                row["error"] = f"IR image: {r['error'].splitlines()[0] if r['error'] else 'failed'}"
                skipped += 1
                continue
            tc = r["toolchain"]
            try:
                resolved = targetmod.resolve(name, compiler_version=tc["version"], family=tc["family"]).name
            except BakeryError as e:
                row["error"] = _error_text(e)
                skipped += 1
                continue
            row["resolved"] = resolved
            pair = (r["ref"], resolved)
            if pair in unique:
                owners[unique[pair]].append(len(pairs) - 1)
                skipped += 1
                continue
            unique[pair] = len(calls)
            owners.append([len(pairs) - 1])
            calls.append(((r["ref"], resolved, opts.registry, opts.engine, opts.tls_verify, opts.jobs, opts.slim,
                           opts.debug),
                          f"{label} {resolved}"))
    return pairs, calls, owners, skipped


def _record_bakes(pairs: list[dict], owners: list[list[int]], results: list[dict]) -> None:
    for idxs, result in zip(owners, results, strict=True):
        for n, i in enumerate(idxs):
            row = pairs[i]
            for k in ("ref", "digest", "status", "seconds", "error"):
                if k in result:
                    row[k] = result[k]
            if result.get("resolved"):
                row["resolved"] = result["resolved"]
            if n:
                row["note"] = f"same node tag as {pairs[idxs[0]]['target']}"


def format_table(result: MatrixResult) -> str:
    """The closing summary: one row per IR image, one per (recipe, target)."""

    def short(ref: str) -> str:
        if "@sha256:" in ref:
            name, digest = ref.split("@", 1)
            return f"{name}@{digest[7:19]}"
        return ref

    rows = [("recipe", "target", "ref", "status", "seconds", "error")]
    for r in result.ir:
        rows.append((r.get("name") or r["recipe"], "(IR)", short(r.get("ref", "")), r["status"],
                     f"{r.get('seconds', 0):.1f}", (r.get("error") or "").splitlines()[0] if r.get("error") else ""))
    for p in result.pairs:
        target = p["target"] if p.get("resolved") in ("", p["target"]) else f"{p['target']}->{p['resolved']}"
        err = (p.get("error") or "").splitlines()[0] if p.get("error") else ""
        if p.get("note"):
            err = (err + "; " if err else "") + p["note"]
        rows.append((p["recipe"], target, short(p.get("ref", "")), p["status"], f"{p.get('seconds', 0):.1f}", err))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, cells in enumerate(rows):
        lines.append(("  ".join(c.ljust(w) for c, w in zip(cells[:5], widths, strict=True)) + "  " + cells[5]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  -----")
    c = result.counts
    lines.append("")
    lines.append(f"IR images: {c['ir_built']} built, {c['ir_reused']} reused, {c['ir_failed']} failed; "
                 f"node tags: {c['baked']} baked, {c['reused']} reused, {c['failed']} failed "
                 f"({c['pairs']} pairs) in {result.seconds:.1f} s")
    return "\n".join(lines)
