"""The one platform table: OCI platforms, their architecture names, clang triples, archspec families."""

from __future__ import annotations

import platform as _pf
from dataclasses import dataclass

from bakery.errors import BakeryError


@dataclass(frozen=True)
class Platform:
    oci: str        # linux/amd64
    arch: str       # amd64 (OCI architecture)
    triple: str     # x86_64-linux-gnu (clang --target, Debian's cross sysroot in /usr/<triple>)
    family: str     # x86_64 (archspec)
    machine: tuple[str, ...]  # what platform.machine() says on it


PLATFORMS = (
    Platform("linux/amd64", "amd64", "x86_64-linux-gnu", "x86_64", ("x86_64", "amd64")),
    Platform("linux/arm64", "arm64", "aarch64-linux-gnu", "aarch64", ("aarch64", "arm64")),
)
_ALIASES = {"linux/arm64/v8": "linux/arm64"}
# The archspec targets an image index may list as a platform variant: the levels runtimes choose
# by (containerd takes the highest amd64 level the host has; podman and skopeo take --variant).
# An exact model (zen4, neoverse_v2) has no variant: in an index, a runtime could pick it for
# another CPU of the same level, so it stays a tag.
VARIANT_OF_TARGET = {"x86_64_v2": ("amd64", "v2"), "x86_64_v3": ("amd64", "v3"), "x86_64_v4": ("amd64", "v4"),
                     "aarch64": ("arm64", "v8")}
ARCH_OF_PLATFORM = {p.oci: p.arch for p in PLATFORMS}
FAMILY_OF_ARCH = {p.arch: p.family for p in PLATFORMS}


def by_oci(name: str) -> Platform:
    name = _ALIASES.get(name, name)
    for p in PLATFORMS:
        if p.oci == name:
            return p
    raise BakeryError(f"unknown platform {name!r}", f"known: {', '.join(p.oci for p in PLATFORMS)}")


def by_family(family: str) -> Platform:
    for p in PLATFORMS:
        if p.family == family:
            return p
    raise BakeryError(f"no platform for the ISA family {family!r}")


def host() -> Platform:
    m = _pf.machine()
    return next((p for p in PLATFORMS if m in p.machine), PLATFORMS[0])


def host_platform() -> str:
    return host().oci


def triple_of_platform(platform: str) -> str:
    return by_oci(platform).triple


def platform_of_family(family: str) -> str:
    return by_family(family).oci


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (a Kubernetes CPU limit, ``podman run --cpus``), at least 1."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)
