"""What runs at every start of an IR image's executable (``/usr/local/bin/<name>`` is a stub
that calls :func:`main`): the hot path of the self-finishing image.

1. the node's target: ``BAKERY_TARGET``, else archspec's detection, clamped to what the image's
   toolchain can express (as ``bakery bake --target native``); another ISA than the image's is
   one line and exit 126;
2. the cache entry for (the plan's digest, the target), checked file by file; when there is
   none (or it fails its check), under the entry's lock: the node tag from the registry, else a
   bake here (:mod:`bakery.launch.finish`);
3. ``exec`` of the binary with the arguments as given: the same process (pid, signals, stdin,
   stdout, tty, exit code), ``argv[0]`` as the stub was started.

Nothing is printed on a hit. Errors of the launcher itself are one ``bakery:`` line and exit
125 (126: this image cannot run on this CPU), so they are never mistaken for the app's own.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from bakery.config import Settings
from bakery.errors import BakeryError
from bakery.launch.cache import Cache, EntryInvalid, choose_root, entry_key, host_key

INFO = Path("/bakery/launch.json")
DEFAULT_CACHE = Path("/var/cache/bakery")
EXIT_LAUNCHER = 125
EXIT_WRONG_ISA = 126


class WrongISA(BakeryError):
    exit_code = EXIT_WRONG_ISA


class Say:
    """The launcher's lines on stderr; ``BAKERY_QUIET=1`` keeps all but errors."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, line: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"bakery: {line}\n")
            sys.stderr.flush()


def read_info(path: Path | None = None) -> dict:
    path = path or INFO
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BakeryError(f"{path} is missing: this is not an IR image made by 'bakery build'") from None
    except (OSError, ValueError) as e:
        raise BakeryError(f"{path} cannot be read ({e})") from None


def detect(info: dict, wanted: str | None):
    """The target this node bakes for (a bakery.target.Target)."""
    from bakery import target as targetmod

    name = wanted or "native"
    uarch = targetmod.lookup(name)
    if uarch.family.name != info["family"]:
        host = "this node" if name == "native" else f"BAKERY_TARGET={name}"
        raise WrongISA(f"this image is {info['platform']} ({info['family']}) and {host} is {uarch.family.name} "
                       f"({uarch.name}); the image has {', '.join(info.get('platforms') or [info['platform']])}",
                       "pull the image for this node's platform (--platform), or build one with "
                       "'bakery build --platform'")
    target = targetmod.resolve(name, compiler_version=info["compiler"], family=info["family"])
    if wanted and wanted != "native":  # native is chosen from this CPU's features; a name given may not fit
        missing = targetmod.missing_on_host(target.name)
        if missing:
            raise WrongISA(f"BAKERY_TARGET={wanted} needs {', '.join(missing)}, which this CPU lacks: its code "
                           "would stop with an illegal instruction", "unset BAKERY_TARGET to finish for this CPU")
    return target


def cache_root(settings: Settings):
    apptainer = bool(os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"))
    home = Path(os.path.expanduser("~/.cache/bakery")) if apptainer and os.path.expanduser("~") != "~" else None
    return choose_root(settings.launch_cache or DEFAULT_CACHE, home_fallback=home)


def binary(name: str, info: dict, settings: Settings, say: Say) -> Path:
    """The checked cache entry's ``name``, made first when needed."""
    if name not in info["executables"]:
        raise BakeryError(f"this image has no executable {name!r}",
                          f"it has: {', '.join(info['executables']) or 'none'}")
    root = cache_root(settings)
    if root.note:
        say(root.note)
    cache = Cache(root.path)
    # archspec's detection costs more than the rest of a start: what it said on this CPU is kept,
    # for hits only. A miss detects again, so a stale or edited memo never decides a bake.
    cpu = host_key(settings.launch_target or "native", info["family"], info["compiler"])
    remembered = cache.remembered_target(cpu)
    problem: EntryInvalid | None = None
    if remembered is not None:
        key = entry_key(info["app"], info["version"], info["plan"], remembered)
        try:
            if cache.check(key, info["plan"], remembered):
                return cache.entry(key) / name
        except EntryInvalid as e:
            problem = e
    target = detect(info, settings.launch_target)
    if target.name != remembered:
        cache.remember_target(cpu, target.name)
        key = entry_key(info["app"], info["version"], info["plan"], target.name)
        problem = None
        try:
            if cache.check(key, info["plan"], target.name):
                return cache.entry(key) / name
        except EntryInvalid as e:
            problem = e
    if problem is not None:
        say(f"the cached {key} failed its check ({problem}): making it again")
    with cache.locked(key, on_wait=lambda: say(f"waiting for another container that is making {key}")):
        try:
            if cache.check(key, info["plan"], target.name):
                return cache.entry(key) / name  # made by another container while this one waited
        except EntryInvalid:
            pass  # made again below, under the lock
        from bakery.launch import finish

        finish.make(info, target, cache, key, settings, say, private=root.private)
    return cache.entry(key) / name


def main(argv: list[str] | None = None) -> NoReturn:
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(argv[0])
    try:
        settings = Settings.from_env()
        say = Say(settings.quiet)
        path = binary(name, read_info(), settings, say)
        os.execv(path, [argv[0], *argv[1:]])
    except KeyboardInterrupt:
        sys.exit(130)
    except BakeryError as e:
        sys.stderr.write(f"bakery: {e.message}\n" + (f"bakery: hint: {e.hint}\n" if e.hint else ""))
        sys.exit(e.exit_code if isinstance(e, WrongISA) else EXIT_LAUNCHER)
    except OSError as e:
        sys.stderr.write(f"bakery: {name}: {e.strerror or e} ({e.filename or ''})\n")
        sys.exit(EXIT_LAUNCHER)
