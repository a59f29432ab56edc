"""Profile-guided bakes: what an instrumented bake adds, and what a bake with a profile adds.

The profile is taken on the IR the bake starts from, which is the same for every target of the
ISA: a module's simplified IR (bakery.passes) at the start of the bake's half, or the whole
pipeline's input for modules that are not split. So one profile serves every CPU. For a split
module the instrumentation and the profile's use are passes at the head of the bake's half
(``pgo-instr-gen,instrprof`` / ``pgo-instr-use``); for the others, clang's ``-fprofile-generate``
and ``-fprofile-use``, which run the same passes at the same place of the whole pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bakery import oci, proc
from bakery.capture.flags import sha256_file
from bakery.errors import BakeryError, PlanRefused

log = logging.getLogger(__name__)

MODES = ("generate", "use")
PGO_INLINE = ("cgscc(devirt<4>(inline,function<eager-inv>(sroa<modify-cfg>,early-cse<memssa>,simplifycfg,"
              "instcombine)))")


@dataclass(frozen=True)
class Profile:
    mode: str                   # "generate": an instrumented bake; "use": a bake with the profile
    path: Path | None = None    # use: the merged .profdata
    digest: str = ""            # use: its sha256, in the object cache's key and the node tag

    def head_passes(self) -> list[str]:
        """Passes before the bake's half of the pipeline (split modules). With the profile, the
        inliner runs once more, now knowing which calls are hot (the capture's ran without it),
        with the cleanups the simplification half runs after it: libyaml 1.17x the best
        from-source build against 1.13x without it, for 0.5 s more of a 1.5 s bake."""
        if self.mode == "generate":
            return ["pgo-instr-gen", "instrprof"]
        return ["pgo-instr-use", PGO_INLINE]

    def opt_options(self) -> list[str]:
        # warn of functions the profile has no record of: the IR it was made on was another
        return [f"-pgo-test-profile-file={self.path}", "-pgo-warn-missing-function"] if self.mode == "use" else []

    def clang_flags(self) -> list[str]:
        """Flags of a module's whole-pipeline compile (modules that are not split)."""
        return ["-fprofile-generate"] if self.mode == "generate" else [f"-fprofile-use={self.path}"]

    def link_flags(self) -> list[str]:
        """The profile runtime for an instrumented bake's links."""
        return ["-fprofile-generate"] if self.mode == "generate" else []

    def key(self) -> list[str]:
        return [f"profile={self.mode}:{self.digest}"]


# -- a profile next to a bundle -------------------------------------------------------------------

MEDIA_TYPE = "application/vnd.bakery.profile.v1"
MISSES_WARN = 20   # functions a profile has no record of, above which a bake says so as a warning
MAX_BYTES = 256 << 20
PROFDATA, RECORD = "profile.profdata", "profile.json"


def folder_of(bundle: Path) -> Path:
    """Where a bundle's profile lives: ``BUNDLE.profile/`` beside it (the bundle stays as made)."""
    return bundle.with_name(bundle.name + ".profile")


def plan_digest(bundle: Path) -> str:
    return oci.sha256((bundle / "plan.json").read_bytes())  # as images record it


def _sha(path: Path) -> str:
    return "sha256:" + sha256_file(str(path))


def find(bundle: Path, explicit: Path | None = None) -> Profile | None:
    """The profile to bake ``bundle`` with: ``explicit`` (a .profdata, or a profile folder), else
    the one beside the bundle, if any. A profile of another plan (the IR changed since) is not used,
    with a note; one whose bytes differ from its record, or too large, is refused."""
    where = explicit if explicit is not None else folder_of(bundle)
    folder = where if where.is_dir() else where.parent
    data = where if where.is_file() else folder / PROFDATA
    if not data.is_file():
        if explicit is not None:
            raise BakeryError(f"no profile at {explicit}", "make one with 'bakery profile BUNDLE -- COMMAND'")
        return None
    if data.stat().st_size > MAX_BYTES:
        raise PlanRefused(f"profile refused: {data} is larger than {MAX_BYTES >> 20} MiB")
    digest = _sha(data)
    record_file = folder / RECORD
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    if record is not None:
        if not isinstance(record, dict) or record.get("profile") != digest:
            raise PlanRefused(f"profile refused: {data} does not match its record {record_file} (sha256 differs)")
        if record.get("ir") != plan_digest(bundle):
            log.warning(f"bake: the profile in {folder} was made for another IR ({str(record.get('ir'))[:19]}…): "
                        "baking without it; make a new one with 'bakery profile'")
            return None
    return Profile("use", data.resolve(), digest)


def mismatches(stderr: str) -> int:
    """How many functions the profile did not fit (opt's pgo-instr-use warnings)."""
    return sum(1 for line in stderr.splitlines() if "profile" in line and ("mismatch" in line or "no profile" in line))


def merge(toolchain, raws: list[Path], dest: Path, also: list[Path] | None = None) -> None:
    if not raws and not also:
        raise BakeryError("the command wrote no profile", "does it run the baked program? (its PATH has them first)")
    tmp = dest.with_name(dest.name + ".tmp")
    proc.run([toolchain.tool("llvm-profdata"), "merge", "-o", str(tmp), *map(str, also or []), *map(str, raws)])
    os.replace(tmp, dest)


def save(bundle: Path, toolchain, raws: list[Path], command: list[str], *, replace: bool = False) -> Path:
    """Merge the raw profiles into the bundle's profile folder (with the profile there, unless
    ``replace`` or it is another IR's), and write its record."""
    folder = folder_of(bundle)
    folder.mkdir(exist_ok=True)
    data, record_file = folder / PROFDATA, folder / RECORD
    ir = plan_digest(bundle)
    old = json.loads(record_file.read_text()) if record_file.is_file() else {}
    keep = not replace and data.is_file() and old.get("ir") == ir and old.get("profile") == _sha(data)
    merge(toolchain, raws, data, [data] if keep else [])
    runs = (old.get("runs", []) if keep else []) + [{"command": command, "inputs": _inputs(command),
                                                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    record = {"mediaType": MEDIA_TYPE, "ir": ir, "profile": _sha(data), "toolchain": toolchain.version,
              "runs": runs}
    tmp = record_file.with_name(RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, record_file)
    return folder


def _inputs(command: list[str]) -> dict[str, str]:
    """The digests of the files the command names (its training inputs)."""
    out = {}
    for a in command[1:]:
        p = Path(a)
        if p.is_file() and p.stat().st_size <= (4 << 30):
            out[a] = _sha(p)
    return out


def run(command: list[str], bindir: Path, rawdir: Path) -> int:
    """COMMAND with the instrumented outputs first on PATH and the profile runtime writing to ``rawdir``."""
    env = dict(os.environ, LLVM_PROFILE_FILE=str(rawdir / "%p-%m.profraw"),
               PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               LD_LIBRARY_PATH=f"{bindir}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(os.pathsep))
    exe = shutil.which(command[0], path=env["PATH"])
    if exe is None:
        raise BakeryError(f"{command[0]}: not found among the baked outputs or on PATH")
    return subprocess.call([exe, *command[1:]], env=env)
