"""The launcher's slow path, under the cache entry's lock: the node tag, else a bake here.

* **The node tag** ``<repo>:<tag>-<target>`` in the registry the image was built for, or in
  ``BAKERY_REGISTRY`` (a `bakery serve` there bakes it once for every node that asks; its
  503 + Retry-After while it bakes is waited on). Only the thin top layer is fetched, over the
  registry's HTTP API with the standard auth files or ``BAKERY_REGISTRY_TOKEN``; the node tag
  must say it was baked from this image's plan (``dev.bakery.plan.digest``) for this target,
  the blob must match its digest, and it must hold exactly the plan's outputs, regular files.
* **A bake here**, with the image's own toolchain and bundle (the plan checked, every module's
  digest too), one line saying so and a progress line every few seconds. With
  ``BAKERY_PUSH=1`` the result is pushed as the node tag, for the next node of this CPU type.

A registry that is down, refuses, or has no such tag is a note in the bake line, never a failure.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bakery import oci
from bakery.config import Settings
from bakery.errors import BakeryError
from bakery.launch.cache import Cache

log = logging.getLogger(__name__)
BIN = "usr/local/bin"
PROGRESS_EVERY = 5.0   # seconds between progress lines while baking
WAIT_CAP = 30.0        # the longest sleep between asks to a registry that is baking


class NotThere(Exception):
    """The registry has no such node tag (the normal case on the first node of a CPU type)."""


def image_ref(info: dict, settings: Settings) -> tuple[oci.Ref, bool] | None:
    """(the IR image's reference with the registry to ask, TLS verified?), or None without one."""
    try:
        ref = oci.Ref.parse(info["ref"])
    except (BakeryError, KeyError, TypeError):
        return None
    if settings.registry:
        ref = oci.Ref(settings.registry, ref.repository, ref.tag, None)
    tls = False if settings.registry_plain_http else oci.tls_default(ref.registry)
    return ref, tls


def make(info: dict, target, cache: Cache, key: str, settings: Settings, say: Callable[[str], None], *,
         private: bool = False) -> None:
    """Make the cache entry ``key``: from the node tag when there is one, else by a bake here."""
    from bakery.images.node import tag_for

    cache.clean(key)
    record = {"app": info["app"], "version": info["version"], "plan": info["plan"], "target": target.name}
    found = image_ref(info, settings)
    reason = "the image names no registry"
    if found is not None:
        ref, tls = found
        tag = tag_for(ref.tag or info["version"], target.name)
        where = f"{ref.registry}/{ref.repository}:{tag}"
        with cache.workdir(key, "fetch") as tmp:
            try:
                files = fetch(ref, tls, tag, info, target.name, Path(tmp) / "out", settings, say)
                cache.install(key, files, {**record, "source": where})
                return
            except NotThere:
                reason = f"no node tag {where}"
            except (BakeryError, OSError) as e:
                reason = f"node tag {where} not fetched: {_one_line(e)}"
    where_cache = "this container's own cache" if private or not _mounted(cache.dir.parent) else str(cache.dir.parent)
    say(f"baking {info['app']} {info['version']} for {target.name}: the first start on this CPU type "
        f"({reason}); kept in {where_cache}")
    with cache.workdir(key, "bake") as tmp:
        profile = _profile(info, found, Path(tmp) / "profile.profdata", say) if found is not None else None
        files = bake_here(info, target, Path(tmp), say, objects=cache.dir, profile=profile)
        cache.install(key, files, {**record, "source": "bake", **({"profile": profile.digest} if profile else {})})
    if settings.push and found is not None:
        push(info, found[0], found[1], target, {n: cache.entry(key) / n for n in files}, say,
             profile=profile.digest if profile else None)


# -- the node tag ---------------------------------------------------------------------------------

def fetch(ref: oci.Ref, tls: bool, tag: str, info: dict, target: str, dest: Path, settings: Settings,
          say: Callable[[str], None]) -> dict[str, Path]:
    """The node tag's outputs, checked, in ``dest``; NotThere when the registry has no such tag."""
    from bakery.images import direct
    from bakery.images.node import platform_manifest

    reg = oci.Registry(ref.registry, tls_verify=tls)
    repo = ref.repository
    _wait_for(reg, repo, tag, settings, say)
    what = f"the node tag {repo}:{tag}"
    _, doc = platform_manifest(reg, repo, tag, what)  # this node's platform is the image's (checked)
    layers = oci.descriptors(doc.get("layers"), what)
    made_for = dict(doc.get("annotations") or {})
    if "dev.bakery.plan.digest" not in made_for and isinstance(doc.get("config"), dict):
        config = oci.json_object(reg.get_blob(repo, doc["config"]["digest"], max_size=4 << 20), f"{what}'s config")
        made_for = dict((config.get("config") or {}).get("Labels") or {})
    if made_for.get("dev.bakery.plan.digest") != info["plan"]:
        raise BakeryError(f"{what} was not baked from this image's plan")
    if made_for.get("dev.bakery.target") != target:
        raise BakeryError(f"{what} was baked for {made_for.get('dev.bakery.target')!r}, not {target}")
    if not layers:
        raise BakeryError(f"{what} has no layers")
    if direct.extract_layer(reg, repo, layers[-1], dest, BIN, what=what) is None:
        raise BakeryError(f"{what}'s top layer has nothing in /{BIN}")
    got, want = set(os.listdir(dest)), set(info["outputs"])
    if got != want:
        raise BakeryError(f"{what}'s top layer holds {', '.join(sorted(got)) or 'nothing'}, "
                          f"not the plan's outputs {', '.join(sorted(want))}")
    return {name: dest / name for name in sorted(want)}


def _wait_for(reg: oci.Registry, repo: str, tag: str, settings: Settings, say: Callable[[str], None]) -> None:
    """Return when the registry has ``repo:tag``; NotThere when it has none. A registry that
    answers 503/429 with Retry-After (bakery serve, baking it) is asked again until it has it,
    for at most BAKERY_BAKE_TIMEOUT seconds."""
    deadline = time.monotonic() + settings.bake_timeout
    told = False
    while True:
        try:
            if reg.head_manifest(repo, tag) is None:
                raise NotThere
            return
        except oci.RegistryError as e:
            if e.status not in (429, 503) or time.monotonic() > deadline:
                raise
            if not told:
                told = True
                say(f"waiting for {reg.host} to bake {repo}:{tag}")
            time.sleep(min(WAIT_CAP, max(1.0, e.retry_after or 5.0)))


# -- a bake here ------------------------------------------------------------------------------------

def _profile(info: dict, found: tuple[oci.Ref, bool], dest: Path, say: Callable[[str], None]):
    """The profile attached to this image in its registry (bakery.images.profiles), or None: the
    image's tag must still name this plan, and a registry that cannot say is no profile."""
    from bakery.bake.profile import Profile
    from bakery.images import node as nodemod
    from bakery.images import profiles

    ref, tls = found
    try:
        reg = oci.Registry(ref.registry, tls_verify=tls)
        digest, _, plan_bytes = nodemod.resolve_ir(reg, ref, info["family"])
        if oci.sha256(plan_bytes) != info["plan"]:
            return None  # the tag names another build now
        got = profiles.fetch(reg, ref.repository, digest, info["plan"], dest)
    except (BakeryError, OSError) as e:
        log.debug(f"launch: no profile ({_one_line(e)})")
        return None
    if got is None:
        return None
    say(f"with the profile attached to the image ({got[:19]}…)")
    return Profile("use", dest, got)


def bake_here(info: dict, target, work: Path, say: Callable[[str], None], objects: Path | None = None,
              profile=None) -> dict[str, Path]:
    """The outputs baked in this container with its toolchain, in ``work``/out; ``objects``: the
    folder of an object cache (a new version of the image reuses its unchanged modules);
    ``profile``: a profile-guided bake (bakery.bake.profile)."""
    from bakery import bake as bakemod
    from bakery import plan as planmod
    from bakery import toolchain as toolchainmod

    bundle = Path(info["bundle"])
    if oci.sha256((bundle / "plan.json").read_bytes()) != info["plan"]:
        raise BakeryError(f"{bundle}/plan.json is not the plan this image was built with")
    plan = planmod.load(bundle)
    try:
        tc = toolchainmod.find(info["llvm"])
    except BakeryError as e:
        raise BakeryError(f"this image cannot bake here: {e.message}",
                          "give it a registry with the node tag, or bakery serve, in BAKERY_REGISTRY") from None
    with Progress(info["app"], target.name, say):
        result = bakemod.bake(bundle, plan, tc, target, work / "out", cache=objects, profile=profile)
    return {name: Path(path) for name, path in result.outputs.items()}


class Progress(logging.Handler):
    """A line every few seconds while the bake runs, from the bake's own log records."""

    def __init__(self, app: str, target: str, say: Callable[[str], None], every: float = PROGRESS_EVERY):
        super().__init__(logging.INFO)
        self.app, self.target, self.say, self.every = app, target, say, every
        self.done, self.total, self.phase = 0, 0, "starting"
        self.t0 = time.monotonic()
        self.stop = threading.Event()
        self.logger = logging.getLogger("bakery")
        self.saved = (self.logger.level, self.logger.propagate)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if m := re.search(r"\[(\d+)/(\d+)\] modules", msg):
            self.done, self.total = int(m.group(1)), int(m.group(2))
            self.phase = "compiling" if self.done < self.total else "linking"
        elif record.levelno >= logging.WARNING:
            self.say(f"note: {msg}")

    def _tick(self) -> None:
        while not self.stop.wait(self.every):
            counts = f"{self.done}/{self.total} modules, " if self.total else ""
            self.say(f"baking {self.app} for {self.target}: {self.phase}, {counts}{time.monotonic() - self.t0:.0f} s")

    def __enter__(self) -> Progress:
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        threading.Thread(target=self._tick, daemon=True, name="bakery-progress").start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.logger.removeHandler(self)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]


# -- BAKERY_PUSH=1 --------------------------------------------------------------------------------

def push(info: dict, ref: oci.Ref, tls: bool, target, files: dict[str, Path], say: Callable[[str], None], *,
         profile: str | None = None) -> None:
    """Push the entry as the node tag, on the IR image the reference names when it still has this
    plan. Any failure is a note: the app runs all the same. ``profile``: the digest of the profile
    it was baked with, annotated as node bakes annotate it, and the tag's profile-marked name."""
    from bakery import compat
    from bakery.images import direct
    from bakery.images import node as nodemod

    try:
        reg = oci.Registry(ref.registry, tls_verify=tls)
        digest, plan, plan_bytes = nodemod.resolve_ir(reg, ref, info["family"])
        if oci.sha256(plan_bytes) != info["plan"]:
            say(f"not pushing the node tag: {ref} is now another IR image")
            return
        config = nodemod.node_config(ref, digest, plan, plan_bytes, target, f"the IR image {digest}")
        if profile:
            config.annotations[f"{nodemod.ANN}.profile.digest"] = profile
        tag = nodemod.tag_for(ref.tag or info["version"], target.name)
        pushed = direct.push_node(reg, ref.repository, ref.repository, digest, [files[n] for n in sorted(files)],
                                  tag, bindir="/" + BIN, entrypoint=config.entrypoint,
                                  annotations=config.annotations, labels=config.labels)
        if profile:
            data, media_type, _ = reg.get_manifest(ref.repository, pushed)
            reg.put_manifest(ref.repository, nodemod.profile_tag(tag, profile), data, media_type)
        say(f"pushed {ref.registry}/{ref.repository}:{tag} for the next node of this CPU type")
    except (BakeryError, OSError) as e:
        say(f"the node tag was not pushed: {_one_line(e)}")
        return
    try:
        compat.attach(reg, ref.repository, pushed, target)  # its image compatibility artifact
    except (BakeryError, OSError) as e:
        say(f"the node tag's image compatibility artifact was not attached: {_one_line(e)}")


def _one_line(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.splitlines()[0][:300]


def _mounted(path: Path) -> bool:
    """Is ``path`` a mount point (a volume), not a folder of the container's own layer?"""
    try:
        with open("/proc/self/mountinfo") as f:
            points = {line.split()[4] for line in f if len(line.split()) > 4}
    except OSError:
        return True  # cannot tell: say nothing about it
    real = os.path.realpath(path)
    return real in points or any(real.startswith(p.rstrip("/") + "/") and p != "/" for p in points
                                 if os.path.realpath(p) != "/")

