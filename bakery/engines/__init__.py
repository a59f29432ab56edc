"""Container engines: the interface (base), buildah and the Docker API; this module chooses.

An engine is picked by name (``--engine`` / ``BAKERY_ENGINE``; else buildah when it is
installed, else docker when a Docker socket answers); an unknown name is an error listing the
known ones. base never imports an implementation, and the implementations do not import each
other.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from bakery.config import Settings
from bakery.engines.base import ContainerEngine
from bakery.engines.buildah import BuildahEngine
from bakery.errors import BakeryError


def _docker() -> ContainerEngine:
    from bakery.engines.docker import DockerEngine  # imported on use: the docker SDK is needed only here

    return DockerEngine()


ENGINES: dict[str, Callable[[], ContainerEngine]] = {"buildah": BuildahEngine, "docker": _docker}


def _automatic() -> str:
    """buildah when it is on PATH, else docker when a Docker socket answers (else buildah, to say it is missing)."""
    if shutil.which("buildah"):
        return "buildah"
    from bakery.engines.docker import socket_answers

    return "docker" if socket_answers() else "buildah"


def get(name: str | None = None) -> ContainerEngine:
    name = name or Settings.from_env().engine or _automatic()
    if name == "none":
        raise BakeryError("this command needs a container engine ('none' is for bake IMAGE and serve)",
                          "use --engine buildah or docker")
    try:
        return ENGINES[name]()
    except KeyError:
        raise BakeryError(f"unknown container engine {name!r}", f"known engines: {', '.join(sorted(ENGINES))}") from None


def get_or_none(name: str | None = None) -> ContainerEngine | None:
    """``none``: no container engine; bakes go through the registry's API alone (bakery/images/direct.py)."""
    name = name or Settings.from_env().engine
    return None if name == "none" else get(name)
