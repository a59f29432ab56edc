"""Images: the IR image + plan artifact (build), and node tags (bake).

``build``: render the multi-stage Containerfile, build it with the engine,
push the IR image, attach the plan artifact (subject = the IR manifest).

``bake``: a node tag ``<repo>:<tag>-<target>`` that exists is reused as it is.
Otherwise the IR image is pulled by digest, its plan checked against the
artifact's digest, the bake runs inside a container of the IR image with the
image's own toolchain, and only the outputs are committed as one new layer on
top of the IR image. The push sends blobs first and the manifest last, so an
interrupted bake never leaves the tag. Each node tag pushed then gets its image
compatibility artifact as a referrer (node-feature-discovery's format, ``bakery/compat.py``):
the CPU features its binaries need, which ``nfd compat validate-node`` and ``bakery check`` read.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bakery import compat, oci, proc, safefs, templates
from bakery import plan as planmod
from bakery import target as targetmod
from bakery.config import Settings
from bakery.engines.base import ContainerEngine, Mount
from bakery.errors import BakeryError, CommandFailed, NoImageForFamily, PlanRefused
from bakery.images import base as basemod
from bakery.images.ir import ANN, BIN_DIR, BUNDLE_DIR, ROLE, _copy_package
from bakery.platforms import ARCH_OF_PLATFORM, FAMILY_OF_ARCH, host_platform

log = logging.getLogger(__name__)


@dataclass
class BakeImageResult:
    ref: str
    digest: str
    target: dict
    reused: bool
    seconds: float
    layers: int = 0
    outputs: list[str] = field(default_factory=list)
    profile_tag: str | None = None  # the node tag's second name when baked with a profile (profile_tag)

    def to_json(self) -> dict:
        return self.__dict__.copy()


def resolve_ir(reg: oci.Registry, ref: oci.Ref, family: str | None = None) -> tuple[str, planmod.Plan, bytes]:
    """(IR manifest digest, verified plan, plan bytes); from an index, the ``family``'s image."""
    digest = ref.digest or reg.head_manifest(ref.repository, ref.reference)
    if not digest:
        raise BakeryError(f"{ref} not found in the registry", "build it with 'bakery build RECIPE --push'")
    data, mt, _ = reg.get_manifest(ref.repository, digest)
    if mt in (oci.INDEX, oci.DOCKER_LIST):
        family = family or FAMILY_OF_ARCH.get(ARCH_OF_PLATFORM[host_platform()])
        index = oci.json_object(data, f"the index {ref}")
        entries: dict[str | None, str] = {}
        manifests = index.get("manifests")
        for m in manifests if isinstance(manifests, list) else []:
            plat = m.get("platform") if isinstance(m, dict) else None
            if isinstance(plat, dict) and isinstance(m.get("digest"), str) and oci._DIGEST.match(m["digest"]) \
                    and not _is_bake(m):
                # an IR image: a published index (bakery publish) also lists bakes, by variant
                entries.setdefault(FAMILY_OF_ARCH.get(str(plat.get("architecture"))), m["digest"])
        if family not in entries:
            raise NoImageForFamily(f"{ref} has no {family} image",
                                   f"it has: {', '.join(sorted(k for k in entries if k))}; build with --platform")
        digest = entries[family]
    plan_bytes, _ = oci.fetch_plan(reg, ref.repository, digest)
    plan = planmod.parse(plan_bytes, "the plan artifact")
    return digest, plan, plan_bytes


def _is_bake(descriptor: dict) -> bool:
    ann = descriptor.get("annotations")
    return isinstance(ann, dict) and ann.get(ROLE) == "bake"


def node_tag(ref: oci.Ref, plan: planmod.Plan, target: targetmod.Target) -> str:
    return tag_for(ref.tag or plan.app.version, target.name)


def tag_for(ir_tag: str, target_name: str) -> str:
    """The node tag of an IR image's tag for a target: ``1.0`` -> ``1.0-zen4``."""
    return f"{ir_tag}-{target_name}"


# -- what a host-side bake trusts ------------------------------------------------

DEFAULT_BAKE_TIMEOUT = 7200.0   # seconds; LAMMPS bakes in about a minute on 2 cores


def allowed_llvm_majors() -> list[int]:
    """The LLVM majors this node bakes with: ``BAKERY_LLVM_MAJORS`` (e.g. ``16,17``), else the
    default toolchain's. A plan asks for one; it cannot make the node build others."""
    return list(Settings.from_env().llvm_majors)


def toolchain_major(plan_major: int) -> int:
    """The smallest allowed LLVM major that reads the plan's bitcode (same or newer)."""
    allowed = allowed_llvm_majors()
    fits = [m for m in allowed if m >= plan_major]
    if not fits:
        raise PlanRefused(f"plan refused: its bitcode needs LLVM {plan_major} or newer, and this node bakes with "
                          f"LLVM {', '.join(map(str, allowed))} only",
                          "set BAKERY_LLVM_MAJORS to allow another toolchain (its image is made on this node)")
    return fits[0]


def bake_timeout(value: float | None = None) -> float:
    if value is not None:
        if value <= 0:
            raise BakeryError(f"bake time limit {value:g}: expected seconds > 0")
        return value
    return Settings.from_env().bake_timeout


def trusted_toolchain(engine: ContainerEngine, registry: str, llvm_major: int, *, tls: bool) -> tuple[str, str]:
    """(name, image id) of bakery's own toolchain image that a host-side bake runs in.

    ``BAKERY_TOOLCHAIN_IMAGE`` (a reference pinned by ``@sha256:``) is pulled by digest, so no
    registry can swap it. Otherwise it is this node's own ``localhost/bakery/llvm:…`` (made
    by ``bakery base create`` or an earlier build), made here from Debian's packages when
    missing, never taken from a registry by its tag. The bake pins it by image id."""
    pinned = Settings.from_env().toolchain_image
    if pinned:
        pref = oci.Ref.parse(pinned)
        if not pref.digest:
            raise BakeryError(f"BAKERY_TOOLCHAIN_IMAGE={pinned!r} is not pinned by digest",
                              "write it as HOST/REPO@sha256:<digest>")
        if not engine.exists(str(pref)):
            engine.pull(str(pref), tls_verify=oci.tls_default(pref.registry))
        return str(pref), engine.image_id(str(pref))
    b = basemod.names(registry, llvm_major)
    if not engine.exists(b.llvm):
        log.info(f"bake: making the toolchain image {b.llvm} on this node (once)")
        basemod.ensure_local_toolchain(engine, b, llvm_major, tls_verify=tls)
    return b.llvm, engine.image_id(b.llvm)


def _with_packages(engine: ContainerEngine, tool_id: str, major: int, packages: list[str], *,
                   tls: bool) -> tuple[str, str]:
    """The toolchain image plus the Debian packages the plan links against (made once per set)."""
    key = hashlib.sha256(" ".join([tool_id, *sorted(packages)]).encode()).hexdigest()[:12]
    name = f"localhost/bakery/llvm-packages:{major}-{key}"
    if not engine.exists(name):
        log.info(f"bake: adding {' '.join(packages)} to the toolchain image (once)")
        with tempfile.TemporaryDirectory(prefix="bakery-pkgs-") as ctx:
            cf = Path(ctx) / "Containerfile"
            cf.write_text(templates.render_file("Containerfiles/packages.Containerfile.j2", base=tool_id,
                                                packages=sorted(packages)))
            engine.build(containerfile=cf, context=Path(ctx), tag=name, tls_verify=tls, log=Path(ctx) / "build.log")
    return name, engine.image_id(name)


def export_bundle(engine: ContainerEngine, image: str, plan_bytes: bytes, dest: Path) -> None:
    """The IR image's bundle, as data, checked against the plan artifact before anything else."""
    engine.export_dir(image, BUNDLE_DIR, dest, limits=safefs.Limits())
    check_bundle(dest, plan_bytes)


def check_bundle(dest: Path, plan_bytes: bytes) -> None:
    """An exported bundle's plan must be the plan artifact, and pass the trust checks with its files,
    on the host, before any bake starts."""
    try:
        inside = (dest / "plan.json").read_bytes()
    except FileNotFoundError:
        raise PlanRefused(f"plan refused: the IR image has no {BUNDLE_DIR}/plan.json") from None
    if hashlib.sha256(inside).digest() != hashlib.sha256(plan_bytes).digest():
        raise PlanRefused("plan refused: the IR image's plan differs from the plan artifact attached to it")
    planmod.load(dest)  # schema, allow-lists, confinement


def _bake_in_engine(job: _Job, engine: ContainerEngine, image: str, work: Path, out: Path) -> str:
    """The bundle exported from ``image`` as data, baked in bakery's toolchain image, sandboxed;
    returns the toolchain image's id."""
    export_bundle(engine, image, job.plan_bytes, work / "bundle")
    tool_name, tool_id = trusted_toolchain(engine, job.ref.registry, job.major, tls=job.tls)
    if job.plan.recipe.packages:
        tool_name, tool_id = _with_packages(engine, tool_id, job.major, list(job.plan.recipe.packages), tls=job.tls)
    _copy_package("bakery", work / "lib")
    _copy_package("archspec", work / "lib")
    out.mkdir()
    os.chown(out, 65534, 65534) if os.geteuid() == 0 else out.chmod(0o777)
    argv = ["python3", "-m", "bakery", "bake", BUNDLE_DIR, "--target", job.target.name,
            "--output", "/bakery/out", "--jobs", str(job.jobs or os.cpu_count() or 1), "-q",
            *([] if job.isa_check else ["--no-isa-check"]),
            *(["--profile", "/bakery/profile/profile.profdata"] if job.profile else ["--profile", "none"])]
    volumes: list[Mount] = [(str(work / "bundle"), BUNDLE_DIR, "ro"), (str(work / "lib"), "/opt/bakery/lib", "ro"),
               (str(out), "/bakery/out")]
    if job.profile:
        volumes.append((str(work / "profile"), "/bakery/profile", "ro"))
    ctr = engine.from_image(tool_id, name=_container_name("bake"))
    try:
        where = "cross, " if job.plan.toolchain.family != FAMILY_OF_ARCH[ARCH_OF_PLATFORM[host_platform()]] else ""
        log.info(f"bake: baking {job.ref.repository}@{job.digest[:19]}… for {job.target.name} ({where}in {tool_name})")
        engine.run(ctr, argv, volumes=volumes, env={"PYTHONPATH": "/opt/bakery/lib", "HOME": "/tmp"},
                   log=work / "bake.log", sandbox=True, timeout=job.limit)
    except CommandFailed as e:
        _refused_inside(e)
        raise
    finally:
        engine.remove(ctr)
    return tool_id


def _bake_here(job: _Job, work: Path, out: Path) -> str:
    """``--engine none``: the bundle read from the layer blobs, baked with this machine's LLVM, which
    must be bakery's own container (a pod); returns a name for that toolchain."""
    from bakery.images import direct

    tc = direct.toolchain_here(job.major)
    if not direct.in_container():
        log.warning("bake: --engine none on a host: the bake's compiler runs unconfined here (run bakery in "
                    "its own container for that, or use a container engine)")
    log.info(f"bake: reading the bundle of {job.ref.repository}@{job.digest[:19]}… from its layers")
    direct.export_bundle(job.reg, job.ref.repository, job.digest, BUNDLE_DIR, work / "bundle")
    check_bundle(work / "bundle", job.plan_bytes)
    log.info(f"bake: baking {job.ref.repository}@{job.digest[:19]}… for {job.target.name} "
             f"(this machine's LLVM {job.major})")
    import sys

    argv = [sys.executable, "-m", "bakery", "-q", "bake", str(work / "bundle"), "--target", job.target.name,
            "--output", str(out), "--jobs", str(job.jobs or os.cpu_count() or 1),
            *([] if job.isa_check else ["--no-isa-check"]),
            "--profile", str(work / "profile" / "profile.profdata") if job.profile else "none"]
    env = proc.env_with({"BAKERY_LLVM_VERSION": str(job.major)})
    try:
        proc.stream(argv, cwd=work, env=env, log=work / "bake.log", timeout=job.limit)
    except CommandFailed as e:
        _refused_inside(e)
        raise
    return f"llvm-{tc.version}@{os.uname().nodename}"


def _refused_inside(e: CommandFailed) -> None:
    if e.returncode == PlanRefused.exit_code:  # the bake refused the image's bundle
        why = [l for l in e.output.splitlines() if "refused" in l] or ["see the bake log"]
        raise PlanRefused(f"the IR image was refused by the bake: {why[-1].removeprefix('bakery: error: ')}") from None


@dataclass
class _Job:
    """What the steps of one node bake pass along."""

    ref: oci.Ref
    reg: oci.Registry
    tls: bool
    digest: str               # the IR image's manifest (for its ISA)
    plan: planmod.Plan
    plan_bytes: bytes
    target: targetmod.Target
    major: int                # the LLVM the bake runs
    tag: str                  # the node tag
    limit: float              # seconds the bake may run
    jobs: int
    t0: float = field(default_factory=time.monotonic)
    isa_check: bool = True    # the bake refuses outputs that need features the target lacks
    profile: str | None = None  # the digest of the IR image's profile, in work/profile/ (bakery.images.profiles)

    @property
    def node(self) -> oci.Ref:
        return self.ref.with_tag(self.tag)

    @property
    def outputs(self) -> list[str]:
        return sorted(name for name, _ in self.plan.installs())

    def result(self, ref: str, digest: str, *, reused: bool = False) -> BakeImageResult:
        return BakeImageResult(ref, digest, self.target.to_json(), reused, time.monotonic() - self.t0,
                               outputs=[] if reused else self.outputs)


def bake(text: str, engine: ContainerEngine | None, registry: str, target_name: str, *, push: bool = True,
         slim: bool = False, output: Path | None = None, jobs: int = 0,
         tls_verify: bool | None = None, timeout: float | None = None, isa_check: bool = True) -> BakeImageResult:
    """Bake a node tag (or, with ``output``, the binaries alone) from an IR image.

    Nothing of the image runs: its bundle is exported as data and baked by bakery itself in
    bakery's toolchain image (pinned by id), confined by the engine's sandbox (no network, no
    capabilities, user nobody, the bundle read-only) within ``timeout`` seconds. Only the plan's
    install names, each a regular file, are committed. The bake refuses (exit 3, nothing pushed)
    outputs with instructions the target lacks, unless ``isa_check`` is False (bakery.bake.isacheck)."""
    job = _prepare(text, registry, target_name, slim=slim, jobs=jobs, tls_verify=tls_verify, timeout=timeout)
    job.isa_check = isa_check
    work = Path(tempfile.mkdtemp(prefix="bakery-node-"))
    try:
        from bakery.images import profiles

        # A profile attached to the IR image (bakery profile IMAGE) is baked with (bakery.images.profiles).
        job.profile = profiles.fetch(job.reg, job.ref.repository, job.digest, oci.sha256(job.plan_bytes),
                                     work / "profile" / "profile.profdata")
        if output is None and (reused := _existing(job)):
            return reused
        base_image = _slim_base(job.reg, job.ref, job.digest, job.tls) if slim else None
        if engine is None and not push and output is None:
            raise BakeryError("--no-push needs a container engine to commit to", "use --engine buildah or docker")
        if job.profile:
            log.info(f"bake: with the profile attached to the IR image ({job.profile[:19]}…)")
        image, tool_id = _compile(job, engine, work)
        staged = safefs.stage_outputs(work / "out", [name for name, _ in job.plan.installs()], work / "stage")
        if output is not None:
            return _write_outputs(job, staged, output)
        config = _node_config(job, tool_id)
        if engine is None:
            return _mark_profile(job, _push_through_registry(job, staged, base_image, config))
        result = _commit(job, engine, image, base_image, work / "stage", config, push=push)
        return _mark_profile(job, result) if push else result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare(text: str, registry: str, target_name: str, *, slim: bool, jobs: int, tls_verify: bool | None,
             timeout: float | None) -> _Job:
    """The IR image and its checked plan, the target as the plan's toolchain can express it."""
    limit = bake_timeout(timeout)
    ref = oci.Ref.parse(text, default_registry=registry)
    tls = oci.tls_default(ref.registry, tls_verify)
    reg = oci.Registry(ref.registry, tls_verify=tls)
    digest, plan, plan_bytes = resolve_ir(reg, ref, targetmod.lookup(target_name).family.name)
    tc = plan.toolchain
    target = targetmod.resolve(target_name, compiler_version=tc.version, family=tc.family)
    major = toolchain_major(tc.llvm_major)
    for note in target.notes:
        log.info(f"bake: {note}")
    tag = node_tag(ref, plan, target) + ("-slim" if slim else "")
    return _Job(ref, reg, tls, digest, plan, plan_bytes, target, major, tag, limit, jobs)


def _existing(job: _Job) -> BakeImageResult | None:
    """The node tag, when it exists and was baked from this IR image."""
    existing = job.reg.head_manifest(job.ref.repository, job.tag)
    if not existing:
        return None
    ann = oci.json_object(job.reg.get_manifest(job.ref.repository, existing)[0], f"the manifest of {job.node}") \
        .get("annotations")
    made_from = ann.get(f"{ANN}.ir.digest") if isinstance(ann, dict) else None
    with_profile = ann.get(f"{ANN}.profile.digest") if isinstance(ann, dict) else None
    if with_profile != job.profile:
        log.info(f"bake: {job.node} was baked {'with another profile' if with_profile else 'without a profile'}: "
                 "baking it again with the IR image's")
        return None
    if made_from in (None, job.digest):
        log.info(f"bake: {job.node} exists, reusing it")
        _ensure_compat(job, existing)
        return _mark_profile(job, job.result(f"{job.node}@{existing}", existing, reused=True))
    log.info(f"bake: {job.node} was baked from another IR ({str(made_from)[:19]}…): baking it again")
    return None


def profile_tag(tag: str, profile_digest: str) -> str:
    """The second name of a node tag baked with a profile: ``1.0-zen4-pgo-<12 hex of the
    profile's digest>``. The launcher, serve and runtimes find the bake by its node tag, which
    stays the same; this name says, in any tag list, which bakes are profile-guided and with
    which profile."""
    name = f"{tag}-pgo-{profile_digest.removeprefix('sha256:')[:12]}"
    if not oci.valid_tag(name):
        raise BakeryError(f"{name!r} is not a valid tag (too long?)", "use a shorter tag for the IR image")
    return name


def _mark_profile(job: _Job, result: BakeImageResult) -> BakeImageResult:
    """A bake with a profile is tagged under its marked name too (the same manifest)."""
    if job.profile:
        data, media_type, _ = job.reg.get_manifest(job.ref.repository, result.digest)
        marked = profile_tag(job.tag, job.profile)
        job.reg.put_manifest(job.ref.repository, marked, data, media_type)
        result.profile_tag = str(job.ref.with_tag(marked))
        log.info(f"bake: profile-guided, also tagged {result.profile_tag}")
    return result


def _compile(job: _Job, engine: ContainerEngine | None, work: Path) -> tuple[str, str]:
    """The outputs in work/out; returns (the pulled IR image, or "", the toolchain's id)."""
    out = work / "out"
    if engine is None:
        return "", _bake_here(job, work, out)
    log.info(f"bake: pulling {job.ref.repository}@{job.digest[:19]}…")
    image = engine.pull(str(job.ref.with_digest(job.digest)), tls_verify=job.tls)
    _remove_stale_containers(engine)
    return image, _bake_in_engine(job, engine, image, work, out)


def _write_outputs(job: _Job, staged: list[Path], output: Path) -> BakeImageResult:
    """``--output DIR``: the binaries alone (an init container's emptyDir)."""
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    for f in staged:
        tmp = output / f".{f.name}.tmp"
        shutil.copyfile(f, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, output / f.name)  # a reader never sees half a binary
    return job.result(str(output), "")


@dataclass(frozen=True)
class NodeConfig:
    entrypoint: list[str] | None
    annotations: dict[str, str]
    labels: dict[str, str]


def _node_config(job: _Job, tool_id: str) -> NodeConfig:
    config = node_config(job.ref, job.digest, job.plan, job.plan_bytes, job.target, tool_id)
    if job.profile:
        config.annotations[f"{ANN}.profile.digest"] = job.profile
    return config


def node_config(ref: oci.Ref, ir_digest: str, plan: planmod.Plan, plan_bytes: bytes, target: targetmod.Target,
                tool_id: str) -> NodeConfig:
    """A node tag's entrypoint, annotations and labels. ``dev.bakery.plan.digest`` (annotation
    and label) is what the launcher checks before it takes a node tag for its own plan."""
    entry = plan.recipe.entrypoint
    made_for = {f"{ANN}.target": target.name, f"{ANN}.plan.digest": oci.sha256(plan_bytes)}
    return NodeConfig(
        entrypoint=[f"{BIN_DIR}/{entry[0]}", *entry[1:]] if entry else None,
        annotations={**made_for, f"{ANN}.target.flags": " ".join(target.flags),
                     f"{ANN}.ir.digest": ir_digest, f"{ANN}.toolchain.image": tool_id,
                     "org.opencontainers.image.base.name": str(ref),
                     "org.opencontainers.image.base.digest": ir_digest},
        labels=made_for)


def _push_through_registry(job: _Job, staged: list[Path], base_image: str | None,
                           config: NodeConfig) -> BakeImageResult:
    """``--engine none``: the node layer pushed through the registry's API."""
    from bakery.images import direct

    base_reg, base_repo, base_digest = job.reg, job.ref.repository, job.digest
    if base_image is not None:
        bref = oci.Ref.parse(base_image)
        base_reg = job.reg if bref.registry == job.ref.registry else \
            oci.Registry(bref.registry, tls_verify=job.tls and oci.tls_default(bref.registry))
        base_repo, base_digest = bref.repository, platform_manifest(base_reg, bref.repository, bref.reference,
                                                                     f"the runtime base {bref}")[0]
    log.info(f"bake: pushing {job.node} (one layer, through the registry API)")
    new_digest = direct.push_node(job.reg, job.ref.repository, base_repo, base_digest, staged, job.tag,
                                  bindir=BIN_DIR, entrypoint=config.entrypoint, annotations=config.annotations,
                                  labels=config.labels, base_reg=base_reg)
    _attach_compat(job, new_digest)
    return job.result(f"{job.node}@{new_digest}", new_digest)


def _commit(job: _Job, engine: ContainerEngine, image: str, base_image: str | None, stage: Path,
            config: NodeConfig, *, push: bool) -> BakeImageResult:
    """One new layer of the staged outputs on the IR image (or the slim base), pushed as the tag."""
    if base_image is not None:
        if not engine.exists(base_image):
            engine.pull(base_image, tls_verify=job.tls and oci.tls_default(oci.Ref.parse(base_image).registry))
        missing = slim_missing_libraries(engine, base_image, stage)
        if missing:
            raise BakeryError(
                f"--slim: the runtime base {base_image} lacks {', '.join(missing)}, which the baked "
                f"outputs ({', '.join(job.outputs)}) load",
                "bake without --slim (the node tag then sits on the IR image, which has the toolchain's "
                "libraries and the recipe's packages), or give the recipe a runtime.base that has them")
    ctr = engine.from_image(base_image or image, name=_container_name("commit"))
    try:
        engine.copy(ctr, stage, BIN_DIR)
        engine.configure(ctr, entrypoint=config.entrypoint, annotations=config.annotations, labels=config.labels)
        if not push:
            local = f"localhost/bakery-node/{job.ref.repository}:{job.tag}"
            engine.commit(ctr, local)
            return job.result(local, "")
        log.info(f"bake: committing and pushing {job.node}")
        new_digest = engine.commit_push(ctr, str(job.node), tls_verify=job.tls)
    finally:
        engine.remove(ctr)
    _attach_compat(job, new_digest)
    return job.result(f"{job.node}@{new_digest}", new_digest)


def _attach_compat(job: _Job, digest: str) -> None:
    """Attach the node tag's image compatibility artifact (the CPU features its binaries need) as a
    referrer of its manifest. The tag is pushed by then: a failure is a warning, and the next bake
    of the tag, which reuses it, attaches the artifact."""
    try:
        artifact = compat.attach(job.reg, job.ref.repository, digest, job.target)
    except BakeryError as e:
        log.warning(f"bake: {job.node} is pushed, but not its image compatibility artifact: {e.message}")
        return
    log.info(f"bake: attached its image compatibility artifact (NFD v1alpha1, {artifact[:19]}…): "
             f"bakery check {job.node}")


def _ensure_compat(job: _Job, digest: str) -> None:
    """A reused node tag pushed before node tags had a compatibility artifact gets one now."""
    try:
        if compat.has_artifact(job.reg, job.ref.repository, digest):
            return
    except BakeryError as e:
        log.warning(f"bake: could not look for the image compatibility artifact of {job.node}: {e.message}")
        return
    _attach_compat(job, digest)


def _container_name(step: str) -> str:
    return f"bakery-{step}-{os.getpid()}-{next(_SEQ)}-{int(time.time())}"


_SEQ = itertools.count(1)  # next() on a count is atomic: safe for serve's worker threads


def _remove_stale_containers(engine: ContainerEngine) -> None:
    """Working containers of bakes that were killed: their process is gone. Tidying only: a
    daemon that cannot list its containers is noted, and the bake goes on."""
    try:
        names = engine.containers()
    except BakeryError as e:
        log.warning(f"bake: could not look for working containers of killed bakes: {e}")
        return
    for name in names:
        parts = name.split("-")
        if len(parts) >= 5 and parts[0] == "bakery" and parts[2].isdigit():
            pid = int(parts[2])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                engine.remove(name)
            except PermissionError:
                pass


def slim_missing_libraries(engine: ContainerEngine, base_image: str, outdir: Path) -> list[str]:
    """Shared libraries the outputs need (DT_NEEDED) that neither come with them nor are known to
    the base's dynamic loader (its /etc/ld.so.cache): libomp for OpenMP codes, the libraries of
    the recipe's -dev packages. An empty list when the base has no cache to tell."""
    readelf = proc.which("readelf")
    shipped = {p.name for p in outdir.iterdir()}
    needed: set[str] = set()
    for f in outdir.iterdir():
        if not f.is_file():
            continue
        with f.open("rb") as fh:  # the magic only: outputs can be many MB
            if fh.read(4) != b"\x7fELF":
                continue
        for line in proc.run([readelf, "-dW", str(f)]).stdout.splitlines():
            if "(NEEDED)" in line and "[" in line:
                needed.add(line.rsplit("[", 1)[1].rstrip("]"))
    try:
        cache = engine.read_file(base_image, "/etc/ld.so.cache")
    except BakeryError:
        return []
    return sorted(n for n in needed - shipped if n.encode() + b"\0" not in cache)


def platform_manifest(reg: oci.Registry, repo: str, ref: str, what: str) -> tuple[str, dict]:
    """(digest, manifest) of ``repo:ref`` for this host's platform (an index: its entry)."""
    data, mt, digest = reg.get_manifest(repo, ref)
    doc = oci.json_object(data, what)
    if mt not in (oci.INDEX, oci.DOCKER_LIST):
        return digest, doc
    arch = ARCH_OF_PLATFORM[host_platform()]
    for m in oci.descriptors(doc.get("manifests"), what):
        if isinstance(m.get("platform"), dict) and m["platform"].get("architecture") == arch and not _is_bake(m):
            return platform_manifest(reg, repo, m["digest"], what)
    raise BakeryError(f"{what} has no {arch} image")


def _layers_of(manifest: dict, what: str) -> list[str]:
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(l, dict) and isinstance(l.get("digest"), str)
                                               for l in layers):
        raise PlanRefused(f"{what} is not an image manifest")
    return [l["digest"] for l in layers]


def _slim_base(reg: oci.Registry, ref: oci.Ref, digest: str, tls: bool) -> str:
    """The runtime base a slim node tag sits on, as named by the IR image, accepted only when
    the IR image's own layers begin with the base's layers: the image already holds that base,
    so naming another (a private image serve's credentials can read) copies nothing out."""
    _, manifest = platform_manifest(reg, ref.repository, digest, f"the IR image {ref}")
    ann = manifest.get("annotations")
    base = ann.get(f"{ANN}.runtime.base") if isinstance(ann, dict) else None
    config = manifest.get("config")
    if not base and isinstance(config, dict) and isinstance(config.get("digest"), str):
        # Engines without manifest annotations (the Docker API) keep it as the image's label.
        cfg = oci.json_object(reg.get_blob(ref.repository, config["digest"]), f"the config of {ref}").get("config")
        labels = cfg.get("Labels") if isinstance(cfg, dict) else None
        base = labels.get(f"{ANN}.runtime.base") if isinstance(labels, dict) else None
    if not isinstance(base, str) or not base:
        raise BakeryError("the IR image does not say which runtime base it has", "bake without --slim")
    try:
        bref = oci.Ref.parse(base)
    except BakeryError as e:
        raise PlanRefused(f"--slim refused: the IR image names the runtime base {base[:200]!r}: {e.message}") from None
    ir_layers = _layers_of(manifest, f"the IR image {ref}")
    breg = reg if bref.registry == ref.registry else \
        oci.Registry(bref.registry, tls_verify=tls and oci.tls_default(bref.registry))
    try:
        base_layers = _layers_of(platform_manifest(breg, bref.repository, bref.reference,
                                                    f"the runtime base {base}")[1], f"the runtime base {base}")
    except BakeryError:
        base_layers = []
    if not base_layers or ir_layers[:len(base_layers)] != base_layers:
        raise PlanRefused(f"--slim refused: the IR image does not sit on the runtime base it names ({base[:200]})",
                          "a slim node tag is made only on the base the IR image was built from")
    return str(bref)
