"""``bakery build``: render the multi-stage Containerfile, build it with the engine, push the IR
image, attach the plan artifact (subject = the IR manifest)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bakery import PLAN_MEDIA_TYPE, __version__, oci, templates
from bakery import plan as planmod
from bakery.capture import sources as sourcesmod
from bakery.engines.base import ContainerEngine
from bakery.errors import BakeryError
from bakery.images import base as basemod
from bakery.platforms import ARCH_OF_PLATFORM, FAMILY_OF_ARCH, host_platform  # noqa: F401

log = logging.getLogger(__name__)
BUNDLE_DIR = "/bakery/bundle"
BIN_DIR = "/usr/local/bin"
ANN = "dev.bakery"
ROLE = f"{ANN}.role"   # an entry of a published index (bakery publish): "ir" or "bake"


def _copy_package(name: str, dest: Path) -> None:
    mod = __import__(name)
    assert mod.__file__ is not None
    src = Path(mod.__file__).resolve().parent
    shutil.copytree(src, dest / name, ignore=_ignore, symlinks=False)


def _ignore(folder: str, names: list[str]) -> set[str]:
    """Not in an image: byte code, and the package data of the host side (templates, the
    registry's config), except the fork server a bake in the container builds (bakery.bake.warm)."""
    drop = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
    if Path(folder).name == "data" and Path(folder).parent.name == "bakery":
        drop |= {n for n in names if n != "forkserver"}
    return drop


def render_containerfile(recipe, bases: basemod.Bases, jobs: int = 0, platform: str | None = None,
                         runtime_image: str | None = None, inputs: str | None = None, *, ref: str = "",
                         platforms: list[str] | None = None) -> str:
    """The IR image's Containerfile. ``ref`` (REGISTRY/REPO:TAG) is where the launcher looks for
    node tags; ``platforms`` are all the platforms built under that reference."""
    host = host_platform()
    platform = platform or host
    labels = {
        "org.opencontainers.image.title": recipe.name,
        "org.opencontainers.image.version": recipe.version,
        f"{ANN}.recipe.digest": recipe.digest,
        f"{ANN}.inputs.digest": inputs or sourcesmod.inputs_digest(recipe),
        f"{ANN}.plan.mediaType": PLAN_MEDIA_TYPE,
        f"{ANN}.bundle": BUNDLE_DIR,
        f"{ANN}.runtime.base": bases.remote(bases.runtime) or bases.runtime,
        f"{ANN}.version": __version__,
    }
    entry = [f"{BIN_DIR}/{recipe.entrypoint[0]}", *recipe.entrypoint[1:]] if recipe.entrypoint else []
    cross = platform != host
    if cross and recipe.runtime_packages:
        raise BakeryError(f"runtime.packages with --platform {platform} is not supported yet",
                          "the cross capture has only Debian's cross sysroot")
    labels[f"{ANN}.platform"] = platform
    if cross and runtime_image:
        labels[f"{ANN}.runtime.base"] = bases.remote(runtime_image) or runtime_image
    return templates.render_file(
        "Containerfiles/ir.Containerfile.j2", name=recipe.name, version=recipe.version, build_image=bases.build,
        llvm_image=bases.llvm, packages=recipe.runtime_packages, recipe_file=recipe.path.name,
        bundle_dir=BUNDLE_DIR, jobs=jobs, labels=labels, entrypoint=entry, platform=platform, cross=cross,
        runtime_image=runtime_image or bases.runtime,
        debian_sources=any(src.kind == "debian" for src in recipe.sources), launch=launch_argv(ref, platform, platforms or [platform]))


def launch_argv(ref: str, platform: str, platforms: list[str]) -> list[str]:
    """The last step of the IR image: the launcher and its stubs (bakery.launch.install)."""
    return ["python3", "-m", "bakery.launch.install", BUNDLE_DIR, "--ref", ref, "--platform", platform,
            "--platforms", ",".join(platforms)]




def _context(recipe, dest: Path) -> None:
    """Build context: bakery and archspec (not packaged by Debian) + the recipe's directory."""
    for src in recipe.sources:
        if src.kind == "path" and Path(recipe.dir) not in [Path(src.location), *Path(src.location).parents]:
            raise BakeryError(f"source path {src.location} is outside the recipe's directory {recipe.dir}",
                              "an image build sends only the recipe's directory to the build")
    _copy_package("bakery", dest / "lib")
    _copy_package("archspec", dest / "lib")
    shutil.copytree(recipe.dir, dest / "recipe", symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", "*.o", ".venv", "_build"))


@dataclass
class BuildResult:
    ref: str
    digest: str
    plan_digest: str
    artifact: str
    seconds: float

    def to_json(self) -> dict:
        return self.__dict__.copy()


def build(recipe, engine: ContainerEngine, registry: str, *, tag: str | None = None, push: bool = True,
          llvm: int = 16, jobs: int = 0, tls_verify: bool | None = None,
          platforms: list[str] | None = None) -> BuildResult:
    """Build the IR image (one per platform, under one OCI index when several) and attach the plan(s)."""
    t0 = time.monotonic()
    tls = oci.tls_default(registry, tls_verify)
    ref = oci.Ref.parse(tag or f"{recipe.name}:{recipe.version}", default_registry=registry)
    platforms = platforms or [host_platform()]
    for p in platforms:
        if p not in ARCH_OF_PLATFORM:
            raise BakeryError(f"unknown platform {p!r}", f"known: {', '.join(ARCH_OF_PLATFORM)}")
    bases = basemod.ensure(engine, registry, llvm, recipe.runtime_base, tls_verify=tls)
    built: list[tuple[str, str, bytes]] = []  # (platform, local image, plan bytes)
    inputs = sourcesmod.inputs_digest(recipe)
    for platform in platforms:
        runtime = None
        if platform != host_platform():
            runtime = basemod.ensure_foreign_runtime(engine, registry, ARCH_OF_PLATFORM[platform],
                                                     tls_verify=tls)
        image = str(ref) if len(platforms) == 1 else f"localhost/bakery-build/{ref.repository}:{ref.tag}-{ARCH_OF_PLATFORM[platform]}"
        with tempfile.TemporaryDirectory(prefix="bakery-ctx-") as ctx_dir:
            ctx = Path(ctx_dir)
            _context(recipe, ctx)
            cf = ctx / "Containerfile"
            cf.write_text(render_containerfile(recipe, bases, jobs, platform, runtime, inputs,
                                               ref=f"{ref.registry}/{ref.repository}:{ref.tag}", platforms=platforms))
            log.info(f"build: {ref} for {platform} (capture inside the build)")
            engine.build(containerfile=cf, context=ctx, tag=image, tls_verify=tls,
                         annotations=_annotations(recipe, bases, llvm, inputs) | {f"{ANN}.platform": platform},
                         on_line=_build_progress() if log.isEnabledFor(logging.INFO) else None)
        plan_bytes = engine.read_file(image, f"{BUNDLE_DIR}/plan.json")
        planmod.parse(plan_bytes, f"{image}:{BUNDLE_DIR}/plan.json")
        built.append((platform, image, plan_bytes))
    if not push:
        return BuildResult(str(ref), "", oci.sha256(built[0][2]), "", time.monotonic() - t0)
    reg = oci.Registry(ref.registry, tls_verify=tls)
    if len(built) == 1:
        log.info(f"build: pushing {ref}")
        digest = engine.push(built[0][1], str(ref), tls_verify=tls)
        targets = {built[0][0]: digest}
    else:
        log.info(f"build: pushing {ref} as an OCI index of {', '.join(platforms)}")
        digest = engine.push_index([b[1] for b in built], str(ref), tls_verify=tls)
        index = json.loads(reg.get_manifest(ref.repository, digest)[0])
        targets = {}
        for m in index.get("manifests", []):
            plat = f"{m['platform']['os']}/{m['platform']['architecture']}"
            targets[plat] = m["digest"]
    artifacts = []
    for platform, _, plan_bytes in built:
        sub = targets[platform]
        data, mt, _ = reg.get_manifest(ref.repository, sub)
        plan = planmod.parse(plan_bytes)
        with tempfile.TemporaryDirectory() as tmp:
            plan_file = Path(tmp) / "plan.json"
            plan_file.write_bytes(plan_bytes)
            artifacts.append(oci.push_plan(
                reg, ref.repository, {"mediaType": mt, "digest": sub, "size": len(data)}, plan_file,
                {f"{ANN}.recipe.digest": recipe.digest, f"{ANN}.toolchain": f"llvm-{plan.toolchain.llvm_major}",
                 f"{ANN}.platform": platform}))
        log.info(f"build: {platform}: plan attached to {sub[:19]}… as {artifacts[-1][:19]}…")
    return BuildResult(f"{ref}@{digest}", digest, oci.sha256(built[0][2]), artifacts[0], time.monotonic() - t0)


def _annotations(recipe, bases, llvm, inputs: str) -> dict:
    return {"org.opencontainers.image.title": recipe.name, "org.opencontainers.image.version": recipe.version,
            f"{ANN}.recipe.digest": recipe.digest, f"{ANN}.inputs.digest": inputs, f"{ANN}.toolchain": f"llvm-{llvm}",
            f"{ANN}.plan.mediaType": PLAN_MEDIA_TYPE,
            f"{ANN}.runtime.base": bases.remote(bases.runtime) or bases.runtime}


def _build_progress():
    last = [0.0]

    def on_line(line: str) -> None:
        # Buildah's STEP lines and bakery's own progress; the rest goes to the log.
        if line.startswith(("STEP ", "capture:", "[")) or "error" in line.lower() or time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            log.info(f"  {line[:200]}")
    return on_line
