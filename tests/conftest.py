"""Shared, expensive things are made once per session: each example is captured
once, and each (example, target) bake and from-source build happens once."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import EXAMPLES  # noqa: F401  (the fixtures' examples)

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import target as targetmod
from bakery import toolchain as toolchainmod

# What a test needs, by the fixtures it uses: `-m "not clang and not images"` runs the tests that
# need no tool at all (wrapper, trust, policy, HTTP, recipe, k8s, references) in seconds.
_NEEDS = {"images": {"registry", "images", "engine", "docker_engine", "service", "pi"},
          "clang": {"toolchain", "builds", "bundle"}}


def pytest_collection_modifyitems(items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _NEEDS.items():
            if used & fixtures:
                item.add_marker(marker)
        if used & _NEEDS["images"]:
            item.add_marker("clang")  # an IR image is a capture, its node tag a bake


@pytest.fixture(scope="session")
def toolchain():
    return toolchainmod.find()


class Builds:
    """Session cache of captures, bakes and from-source builds."""

    def __init__(self, root: Path, toolchain):
        self.root, self.tc = root, toolchain
        self._bundles, self._bakes, self._sources = {}, {}, {}

    def recipe(self, name: str):
        return recipemod.load(EXAMPLES / name / "recipe.yaml")

    def bundle(self, name: str, platform: str | None = None) -> Path:
        key = (name, platform)
        if key not in self._bundles:
            out = self.root / "bundles" / f"{name}-{(platform or 'host').replace('/', '-')}"
            tc = self.tc.for_triple(toolchainmod.triple_of_platform(platform)) if platform else self.tc
            capturemod.capture(self.recipe(name), out, tc)
            self._bundles[key] = out
        return self._bundles[key]

    def target(self, name: str, family: str | None = None):
        return targetmod.resolve(name, compiler_version=self.tc.version, family=family or self.tc.family)

    def baked(self, name: str, target: str, lto: str = "none", platform: str | None = None) -> Path:
        key = (name, target, lto, platform)
        if key not in self._bakes:
            bundle = self.bundle(name, platform)
            plan = planmod.load(bundle)
            out = self.root / "baked" / f"{name}-{target}-{lto}-{(platform or 'host').replace('/', '-')}"
            bakemod.bake(bundle, plan, self.tc, self.target(target, plan.toolchain.family), out, lto=lto)
            self._bakes[key] = out
        return self._bakes[key]

    def from_source(self, name: str, target: str | None = None) -> Path:
        """The recipe's own build, unwrapped: the reference a bake must match."""
        key = (name, target)
        if key not in self._sources:
            flags = list(self.target(target).flags) if target else []
            out = self.root / "source" / f"{name}-{target or 'generic'}"
            capturemod.from_source(self.recipe(name), self.tc, out, flags=flags)
            self._sources[key] = out
        return self._sources[key]


@pytest.fixture(scope="session")
def builds(tmp_path_factory, toolchain) -> Builds:
    return Builds(tmp_path_factory.mktemp("builds"), toolchain)


# -- images: one registry, one set of base images per session --------------------

@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real CNCF distribution registry on a free loopback port."""
    from bakery.images import registry as registrymod

    emb = registrymod.Embedded(tmp_path_factory.mktemp("registry"))
    addr = emb.start(port=0)
    yield addr
    emb.stop()
    _drop_session_images(addr)


def _drop_session_images(addr: str) -> None:
    """Images named after this session's registry (pulled or built by tests) would pile up in the
    node's store, run after run: the port changes every session."""
    if not shutil.which("buildah"):
        return
    cp = subprocess.run(["buildah", "images", "--json"], capture_output=True, text=True)
    assert cp.returncode == 0, f"the image store does not list: {cp.stderr}"
    ours = (f"{addr}/", "localhost/tampered/")
    for img in json.loads(cp.stdout or "[]"):
        names = img.get("names") or []
        if names and all(n.startswith(ours) for n in names):
            subprocess.run(["buildah", "rmi", "-f", img["id"]], capture_output=True)
        else:
            for n in names:
                if n.startswith(ours) and "@" not in n:
                    subprocess.run(["buildah", "untag", img["id"], n], capture_output=True)


@pytest.fixture(scope="session")
def engine():
    from bakery import engines as enginemod

    return enginemod.get("buildah")


class Images:
    """Session cache of IR images built from the examples."""

    def __init__(self, engine, registry, builds):
        self.engine, self.registry, self.builds = engine, registry, builds
        self._built = {}

    def ir(self, name: str):
        if name not in self._built:
            from bakery import images as imagemod

            self._built[name] = imagemod.build(self.builds.recipe(name), self.engine, self.registry)
        return self._built[name]


@pytest.fixture(scope="session")
def images(engine, registry, builds):
    return Images(engine, registry, builds)
