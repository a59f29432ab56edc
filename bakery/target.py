"""CPU targets: archspec names in, compiler flags out.

Every CPU decision goes through archspec: detection of the host, the names users
type, the flags for the toolchain's version, and the reason a target is not
possible. clang's own ``-march=native`` is not used: LLVM 16 falls back to plain
``x86-64`` for a CPU it does not know, silently.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import archspec.cpu

from bakery.errors import BakeryError


@dataclass(frozen=True)
class Target:
    name: str                     # archspec name actually used (after clamping)
    requested: str                # what the user asked for ("native", "zen5", ...)
    family: str                   # x86_64, aarch64, ...
    flags: tuple[str, ...]        # e.g. ("-march=x86-64-v4", "-mtune=generic")
    notes: tuple[str, ...] = field(default=())

    @property
    def cpu(self) -> str | None:
        return _flag_value(self.flags, "-march=") or _flag_value(self.flags, "-mcpu=")

    @property
    def tune(self) -> str | None:
        """The tuning the flags ask for; written into functions' "tune-cpu" at bake."""
        return _flag_value(self.flags, "-mtune=") or _flag_value(self.flags, "-mcpu=")

    def to_json(self) -> dict:
        return {"name": self.name, "requested": self.requested, "family": self.family,
                "flags": list(self.flags), "notes": list(self.notes)}


def _flag_value(flags, prefix: str) -> str | None:
    for f in flags:
        if f.startswith(prefix):
            return f[len(prefix):]
    return None


def known_names() -> list[str]:
    return sorted(archspec.cpu.TARGETS)


def lookup(name: str) -> archspec.cpu.Microarchitecture:
    if name == "native":
        return archspec.cpu.host()
    try:
        return archspec.cpu.TARGETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, known_names(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'bakery targets' to list them"
        raise BakeryError(f"unknown target {name!r}: not an archspec microarchitecture", hint) from None


def resolve(name: str, *, compiler_version: str, family: str) -> Target:
    """archspec target + flags for clang ``compiler_version``, clamped to what it supports."""
    uarch = lookup(name)
    if uarch.family.name != family:
        raise BakeryError(
            f"target {uarch.name} is {uarch.family.name}, but this IR is {family}",
            "bitcode is specific to an ISA: bake it from an IR image built for that platform",
        )
    notes: list[str] = []
    if name == "native":
        notes.append(f"native CPU detected by archspec: {uarch.name}")
    for candidate in [uarch, *uarch.ancestors]:
        try:
            flags = candidate.optimization_flags("clang", compiler_version)
        except archspec.cpu.UnsupportedMicroarchitecture as e:
            if candidate is uarch:
                notes.append(f"clang {compiler_version} cannot target {uarch.name} ({_reason(e)})")
            continue
        if candidate is not uarch:
            notes.append(f"using its closest supported ancestor {candidate.name}")
        return Target(candidate.name, name, family, tuple(flags.split()), tuple(notes))
    raise BakeryError(f"clang {compiler_version} supports neither {uarch.name} nor any of its ancestors")


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text[text.find("[") + 1 : text.rfind("]")] if "[" in text else text


# ISA levels a target-sensitive unit is captured at (lowest first).
DEFAULT_LEVELS = {
    "x86_64": ["x86_64", "x86_64_v2", "x86_64_v3", "x86_64_v4"],
    "aarch64": ["aarch64", "armv8.1a", "armv8.2a", "armv8.4a", "neoverse_v1"],
}


def capture_levels(names: list[str] | None, *, compiler_version: str, family: str) -> list[Target]:
    """Resolved levels, lowest first (archspec's compatibility order), duplicates after clamping dropped."""
    chosen = names or DEFAULT_LEVELS.get(family, [])
    resolved: dict[str, Target] = {}
    for name in chosen:
        t = resolve(name, compiler_version=compiler_version, family=family)
        resolved.setdefault(t.name, t)
    return sorted(resolved.values(), key=lambda t: len(archspec.cpu.TARGETS[t.name].ancestors))


def satisfies(target_name: str, level_name: str) -> bool:
    """Can code built for ``level_name`` run on ``target_name``?

    archspec's order first (an ancestor always fits); across vendors (a haswell
    capture on zen4) the level's features must all be the target's.
    """
    level, target = archspec.cpu.TARGETS[level_name], archspec.cpu.TARGETS[target_name]
    if level <= target:
        return True
    return level.family == target.family and level.features <= target.features


def best_level(target_name: str, levels: list[str]) -> str | None:
    """The highest of ``levels`` (lowest first) that the target satisfies."""
    ok = [lv for lv in levels if lv in archspec.cpu.TARGETS and satisfies(target_name, lv)]
    return ok[-1] if ok else None
