"""Configuration in one place: every environment variable bakery reads, checked, with one-line errors.

``Settings.from_env()`` is cheap and is called where a setting is needed (not cached), so a
variable set by a test or a wrapper script takes effect at once. ``VARIABLES`` documents them;
the README's table lists exactly these (tests/unit/test_layout.py checks it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bakery.errors import BakeryError

DEFAULT_LLVM = 16

# name -> (default as text, what it does): the README's table.
VARIABLES: dict[str, tuple[str, str]] = {
    "BAKERY_REGISTRY": ("the embedded registry", "registry HOST[:PORT] when a command names none, and the launcher's for node tags (http://HOST[:PORT]: plain HTTP)"),
    "BAKERY_ENGINE": ("buildah if installed, else a Docker socket", "container engine: buildah, docker, or none (bake IMAGE, serve)"),
    "BAKERY_REGISTRY_TIMEOUT": ("60", "seconds each registry request may take (two retries follow)"),
    "BAKERY_REGISTRY_TOKEN": ("none: the auth files' logins", "a bearer token, sent as it is to a registry that asks for one"),
    "BAKERY_LLVM_VERSION": (str(DEFAULT_LLVM), "the LLVM major that captures and bakes"),
    "BAKERY_LLVM_BINDIR": ("/usr/lib/llvm-<major>/bin", "where that LLVM's tools are"),
    "BAKERY_LLVM_MAJORS": ("BAKERY_LLVM_VERSION", "LLVM majors a host-side bake may use; a plan needing another is refused"),
    "BAKERY_TOOLCHAIN_IMAGE": ("the node's own localhost/bakery/llvm:...", "the bake's toolchain image, pinned by @sha256:"),
    "BAKERY_BAKE_TIMEOUT": ("7200", "seconds a host-side bake may run"),
    "BAKERY_BAKE_ISOLATION": ("oci when runc or crun is installed, else chroot", "buildah's isolation for the bake container"),
    "BUILDAH_ISOLATION": ("chroot", "buildah's isolation for image builds (the capture stage)"),
    "BAKERY_DEBIAN_MIRROR": ("the mirror apt uses", "Debian mirror for debootstrap"),
    "BAKERY_DATA_DIR": ("$XDG_DATA_HOME/bakery", "where the embedded registry keeps its storage"),
    "BAKERY_TARGET": ("archspec's detection", "launcher: the target to run (an archspec name) instead of the detected one"),
    "BAKERY_CACHE": ("/var/cache/bakery", "launcher: the folder baked binaries are kept in, one entry per plan and target"),
    "BAKERY_PUSH": ("0", "launcher: 1 pushes a node tag after a bake in the container (needs credentials)"),
    "BAKERY_QUIET": ("0", "launcher: 1 prints nothing, not even the line saying it bakes"),
    "BAKERY_FORKSERVER": ("1", "bake: 0 starts clang and opt afresh for every module instead of forking each from one started copy"),
}


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise BakeryError(f"{name}={text!r}: expected seconds > 0")
    return value


def _token(env: Mapping[str, str], name: str) -> str | None:
    text = env.get(name, "").strip()
    if any(c.isspace() or not c.isprintable() for c in text):  # it goes into a header as it is
        raise BakeryError(f"{name}: not a token (it has spaces or control characters)")
    return text or None


def _major(env: Mapping[str, str]) -> int:
    text = env.get("BAKERY_LLVM_VERSION", str(DEFAULT_LLVM)).strip()
    if not text.isdigit():
        raise BakeryError(f"BAKERY_LLVM_VERSION={text!r} is not an LLVM major version", "e.g. BAKERY_LLVM_VERSION=16")
    return int(text)


def _majors(env: Mapping[str, str], default: int) -> tuple[int, ...]:
    text = env.get("BAKERY_LLVM_MAJORS", "").strip()
    if not text:
        return (default,)
    try:
        majors = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        majors = []
    if not majors or any(m < 1 for m in majors):
        raise BakeryError(f"BAKERY_LLVM_MAJORS={text!r}: expected LLVM major versions, e.g. 16,17")
    return tuple(majors)


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise BakeryError(f"{name}={text!r}: expected 1 or 0")


def _registry(env: Mapping[str, str]) -> tuple[str | None, bool]:
    """BAKERY_REGISTRY as HOST[:PORT]; ``http://HOST[:PORT]`` says the registry speaks plain HTTP
    (a `bakery serve` Service in a cluster), ``https://`` is the default written out."""
    text = env.get("BAKERY_REGISTRY", "").strip()
    plain = text.startswith("http://")
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip("/")
    if text and ("/" in text or " " in text):
        raise BakeryError(f"BAKERY_REGISTRY={env['BAKERY_REGISTRY'].strip()!r}: expected HOST[:PORT] or http://HOST[:PORT]")
    return text or None, plain


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    value = env.get(name, "").strip() or None
    if value is not None and value not in choices:
        raise BakeryError(f"{name}={value!r}: expected {' or '.join(choices)}")
    return value


@dataclass(frozen=True)
class Settings:
    registry: str | None = None
    engine: str | None = None
    registry_timeout: float = 60.0
    registry_token: str | None = None
    llvm_version: int = DEFAULT_LLVM
    llvm_bindir: Path | None = None
    llvm_majors: tuple[int, ...] = (DEFAULT_LLVM,)
    toolchain_image: str | None = None
    bake_timeout: float = 7200.0
    bake_isolation: str | None = None
    build_isolation: str = "chroot"
    debian_mirror: str | None = None
    data_dir: Path | None = None
    registry_plain_http: bool = False
    launch_target: str | None = None
    launch_cache: Path | None = None
    push: bool = False
    quiet: bool = False
    forkserver: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        major = _major(env)
        bindir = env.get("BAKERY_LLVM_BINDIR", "").strip()
        data = env.get("BAKERY_DATA_DIR", "").strip()
        registry, plain_http = _registry(env)
        cache = env.get("BAKERY_CACHE", "").strip()
        return cls(
            registry=registry,
            engine=_choice(env, "BAKERY_ENGINE", ("buildah", "docker", "none")),
            registry_timeout=_float(env, "BAKERY_REGISTRY_TIMEOUT", 60.0),
            registry_token=_token(env, "BAKERY_REGISTRY_TOKEN"),
            llvm_version=major,
            llvm_bindir=Path(bindir) if bindir else None,
            llvm_majors=_majors(env, major),
            toolchain_image=env.get("BAKERY_TOOLCHAIN_IMAGE", "").strip() or None,
            bake_timeout=_float(env, "BAKERY_BAKE_TIMEOUT", 7200.0),
            bake_isolation=_choice(env, "BAKERY_BAKE_ISOLATION", ("oci", "chroot")),
            build_isolation=env.get("BUILDAH_ISOLATION", "").strip() or "chroot",
            debian_mirror=env.get("BAKERY_DEBIAN_MIRROR", "").strip() or None,
            data_dir=Path(data) if data else None,
            registry_plain_http=plain_http,
            launch_target=env.get("BAKERY_TARGET", "").strip() or None,
            launch_cache=Path(cache) if cache else None,
            push=_flag(env, "BAKERY_PUSH"),
            quiet=_flag(env, "BAKERY_QUIET"),
            forkserver=_flag(env, "BAKERY_FORKSERVER", default=True),
        )

