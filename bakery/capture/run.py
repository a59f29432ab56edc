"""Capture: run the recipe's unmodified build with bakery's compiler wrappers.

The result is a bundle: ``plan.json`` plus the bitcode, native objects and link
files it names. Nothing else from the build tree is needed to bake.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bakery import passes, proc
from bakery import plan as planmod
from bakery.capture import sources
from bakery.capture.flags import PERMISSIVE_C
from bakery.errors import BakeryError
from bakery.toolchain import Toolchain

log = logging.getLogger(__name__)

WRAPPER = Path(__file__).with_name("wrapper.py")
CC_NAMES = ("cc", "gcc", "clang")
CXX_NAMES = ("c++", "g++", "clang++")


def write_shims(shimdir: Path, config: dict, toolchain: Toolchain) -> dict[str, str]:
    """Shims named like the usual compilers; PATH puts them first so even a
    Makefile that hard-codes ``gcc`` gets the wrapper."""
    shimdir.mkdir(parents=True, exist_ok=True)
    (shimdir / "config.json").write_text(json.dumps(config, indent=1))
    roles = {n: "cc" for n in CC_NAMES} | {n: "c++" for n in CXX_NAMES}
    versioned = {f"clang-{toolchain.major}": "cc", f"clang++-{toolchain.major}": "c++",
                 "gcc-12": "cc", "g++-12": "c++"}
    if "fortran" in config.get("languages", []):
        roles |= {"gfortran": "fortran", "f95": "fortran", "flang": "fortran", f"flang-{toolchain.major}": "fortran"}
    for name, role in (roles | versioned).items():
        shim = shimdir / name
        shim.write_text(
            "#!/bin/sh\n"
            f"exec {shlex.quote(sys.executable)} -I -S {shlex.quote(str(WRAPPER))} "
            f"{shlex.quote(str(shimdir))} {role} \"$@\"\n"
        )
        shim.chmod(0o755)
    compilers = {"CC": str(shimdir / "cc"), "CXX": str(shimdir / "c++")}
    if "fortran" in config.get("languages", []):
        compilers |= {"FC": str(shimdir / "gfortran"), "F77": str(shimdir / "gfortran")}
    return compilers


def build_commands(recipe, root: Path, compilers: dict[str, str], jobs: int) -> tuple[list[list[str]], Path]:
    """The build system's commands, and the directory outputs are relative to."""
    b = recipe.build
    srcdir = (root / b.subdir).resolve()
    make_vars = [f"CC={compilers['CC']}", f"CXX={compilers['CXX']}"]
    fortran = "fortran" in recipe.capture_languages
    if fortran:
        make_vars += [f"FC={compilers['FC']}", f"F77={compilers['FC']}"]
    if b.system == "make":
        return [["make", f"-j{jobs}", *make_vars, *b.options]], srcdir
    if b.system == "cmake":
        bindir = root / "_build"
        return [
            ["cmake", "-S", str(srcdir), "-B", str(bindir), "-DCMAKE_BUILD_TYPE=Release",
             f"-DCMAKE_C_COMPILER={compilers['CC']}", f"-DCMAKE_CXX_COMPILER={compilers['CXX']}",
             *([f"-DCMAKE_Fortran_COMPILER={compilers['FC']}"] if fortran else []), *b.options],
            ["cmake", "--build", str(bindir), "--parallel", str(jobs)],
        ], bindir
    if b.system == "meson":
        # Release unless the recipe says otherwise (meson's default, debug, is -O0); subprojects
        # only from the source tree, never downloaded during a build.
        bindir = root / "_build"
        return [
            ["meson", "setup", str(bindir), str(srcdir), "-Dbuildtype=release", "--wrap-mode=nodownload",
             *b.options],
            ["meson", "compile", "-C", str(bindir), "-j", str(jobs)],
        ], bindir
    if b.system == "autotools":
        cmds = []
        if not (srcdir / "configure").exists():
            cmds.append(["autoreconf", "-fi"])
        cmds.append(["./configure", *make_vars, *b.options])
        cmds.append(["make", f"-j{jobs}", *make_vars])
        return cmds, srcdir
    return [["bash", "-euo", "pipefail", "-c", line] for line in b.script], srcdir


def run_build(recipe, root: Path, shimdir: Path, compilers: dict, jobs: int, build_log: Path, toolchain: Toolchain,
              progress=None) -> Path:
    cmds, outdir = build_commands(recipe, root, compilers, jobs)
    env = proc.env_with({
        "PATH": f"{shimdir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MAKEFLAGS": "", "MFLAGS": "", "JOBS": str(jobs),
        **compilers, **_mpi_compilers(compilers), **toolchain.run_env, **recipe.build.env,
    })
    cwd = (root / recipe.build.subdir).resolve()
    for cmd in cmds:
        log.info(f"capture: $ {shlex.join(cmd)}")
        if cmd[0] in ("make", "cmake", "meson", "autoreconf"):
            proc.which(cmd[0])
        proc.stream(cmd, cwd=cwd, env=env, log=build_log, on_line=progress)
    return outdir


def _mpi_compilers(compilers: dict[str, str]) -> dict[str, str]:
    """MPI compiler wrappers (mpicc, mpicxx, mpifort) run the compiler these name, for Open MPI
    and MPICH alike, so MPI codes built with mpicc are captured too (not only through PATH)."""
    env = {"OMPI_CC": compilers["CC"], "OMPI_CXX": compilers["CXX"],
           "MPICH_CC": compilers["CC"], "MPICH_CXX": compilers["CXX"]}
    if "FC" in compilers:
        env |= {"OMPI_FC": compilers["FC"], "MPICH_FC": compilers["FC"], "MPICH_F77": compilers["FC"]}
    return env


class _Progress:
    """A line every few seconds saying how many translation units are captured."""

    def __init__(self, store: Path, quiet: bool):
        self.store, self.quiet = store, quiet
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if not self.quiet:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()

    def _run(self):
        t0 = time.monotonic()
        while not self.stop.wait(10):
            n = len(os.listdir(self.store / "objs")) if (self.store / "objs").exists() else 0
            log.info(f"capture: {n} translation units captured ({time.monotonic() - t0:.0f}s)")


def capture(recipe, bundle: Path, toolchain: Toolchain, *, jobs: int = 0, workdir: Path | None = None,
            keep: bool = False, mode: str = "capture",
            extra_flags: list[str] | None = None) -> dict:
    """Build the recipe with wrappers and write the bundle; returns the plan."""
    jobs = jobs or recipe.build.jobs or os.cpu_count() or 1
    lock = None
    if workdir is None:
        work, lock = _stable_workdir(recipe)
    else:
        work = Path(workdir).resolve()
    root, store, shimdir = work / "src", work / "store", work / "shims"
    for d in ("bc", "objs", "native", "files", "tmp"):
        (store / d).mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        log.info(f"capture: fetching sources of {recipe.name} {recipe.version}")
        sources.fetch_all(recipe.sources, root)
        config = {
            "store": str(store), "root": str(root), "mode": mode,
            "compilers": {"c": toolchain.clang, "c++": toolchain.clangxx,
                          "fortran": _flang_or_none(toolchain, recipe)},
            "languages": recipe.capture_languages, "opt": "-" + recipe.capture_opt,
            "extra_flags": list(extra_flags or []),
            "fortran_link_flags": toolchain.fortran_link_flags,
            "c_dialect": [] if recipe.capture_strict_c else list(PERMISSIVE_C),
            "split": _split_config(recipe, toolchain, mode),
            "untarget": {"dis": toolchain.tool("llvm-dis"), "as": toolchain.tool("llvm-as")} if mode == "capture" else None,
            "target_flags": toolchain.cross_flags,
            **_level_config(recipe, toolchain, mode),
        }
        compilers = write_shims(shimdir, config, toolchain)
        build_log = work / "build.log"
        with _Progress(store, not log.isEnabledFor(logging.INFO) or mode != "capture"):
            outdir = run_build(recipe, root, shimdir, compilers, jobs, build_log, toolchain)
        build_seconds = time.monotonic() - t0
        if mode != "capture":
            return {"outdir": str(outdir), "seconds": build_seconds, "work": str(work)}
        events = planmod.read_events(store / "events.jsonl")
        plan = planmod.assemble(recipe, toolchain, events, root=root, outdir=outdir, store=store, bundle=bundle,
                                levels=[lv["name"] for lv in config["levels"]])
        plan["capture"]["seconds"] = round(build_seconds, 2)
        planmod.save(plan, bundle)
        log.info(f"capture: {len(plan['modules'])} bitcode modules, {len(plan['objects'])} native objects, "
                 f"{len(plan['links'])} links -> {bundle} ({build_seconds:.1f}s)")
        return plan
    except BakeryError as e:
        if not keep and workdir is None:
            keep = True  # what failed stays inspectable; the log names files in it
            e.hint = (e.hint + "; " if e.hint else "") + f"the work tree is kept in {work}"
        raise
    finally:
        if not keep and workdir is None and mode == "capture":
            shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def _stable_workdir(recipe) -> tuple[Path, int | None]:
    """The capture's work tree at the same path every time for this recipe and version
    (``$TMPDIR/bakery-capture-<name>-<version>``, under a lock), so that a build that writes
    absolute paths into the code (CMake's compile lines become ``source_filename``, ``__FILE__``
    becomes strings) gives the same bitcode for the same source: a re-capture after one changed
    file changes one module, and the object cache reuses the others. A capture of the same
    recipe already running here holds the lock: this one takes a fresh folder."""
    import fcntl
    import re

    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{recipe.name}-{recipe.version}")[:100]
    stable = Path(tempfile.gettempdir()).resolve() / f"bakery-capture-{name}"
    fd = os.open(f"{stable}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        log.info(f"capture: another capture of {recipe.name} {recipe.version} is running here: "
                 "working in a fresh folder (its absolute paths differ, so fewer cached objects are reused)")
        return Path(tempfile.mkdtemp(prefix=f"bakery-{recipe.name}-")).resolve(), None
    if stable.is_symlink() or stable.exists():
        if stable.is_symlink() or not stable.is_dir() or stable.stat().st_uid != os.getuid():
            os.close(fd)
            raise BakeryError(f"{stable} is in the way of the capture (not a folder of this user)",
                              "remove it, or set TMPDIR to a private folder")
        shutil.rmtree(stable)  # a kept or killed capture's tree
    stable.mkdir(mode=0o700)
    return stable, fd


def _level_config(recipe, toolchain: Toolchain, mode: str) -> dict:
    """Levels for target-sensitive capture, and the feature macros that tell them apart."""
    if mode != "capture" or not recipe.capture_detect:
        return {"levels": [], "level_macros": []}
    from bakery import target as targetmod

    levels = targetmod.capture_levels(recipe.capture_levels, compiler_version=toolchain.version,
                                      family=toolchain.family)
    if len(levels) < 2:
        return {"levels": [], "level_macros": []}
    defined = []
    for t in levels:
        out = proc.run([toolchain.clang, *toolchain.cross_flags, "-dM", "-E", "-x", "c", "/dev/null", *t.flags]).stdout
        defined.append(set(out.splitlines()))
    differing = set.union(*defined) - set.intersection(*defined)
    macros = sorted({line.split()[1] for line in differing if line.startswith("#define ")})
    return {"levels": [{"name": t.name, "flags": list(t.flags)} for t in levels], "level_macros": macros}


def _split_config(recipe, toolchain: Toolchain, mode: str) -> dict | None:
    """The capture's half of -O2/-O3 (bakery.passes), for the wrapper; None: pre-optimization IR."""
    if mode != "capture" or not recipe.capture_simplify:
        return None
    levels = {lvl: h.to_json() for lvl in passes.LEVELS if (h := passes.halves(toolchain, lvl)) is not None}
    return {"opt": toolchain.tool("opt"), "levels": levels, "min_bytes": recipe.capture_simplify_min_bytes} \
        if levels else None


def _flang_or_none(toolchain: Toolchain, recipe) -> str | None:
    if "fortran" not in recipe.capture_languages:
        return None
    return toolchain.flang


def from_source(recipe, toolchain: Toolchain, dest: Path, *, flags: list[str] | None = None, jobs: int = 0) -> dict:
    """The recipe's own build with the real compiler (plus ``flags``, e.g. a target's
    -march): the reference a bake is measured against. Outputs and the shared
    libraries of the tree are copied to ``dest``."""
    work = Path(tempfile.mkdtemp(prefix=f"bakery-src-{recipe.name}-"))
    try:
        res = capture(recipe, work / "unused", toolchain, workdir=work, jobs=jobs,
                      mode="passthrough", extra_flags=flags)
        dest.mkdir(parents=True, exist_ok=True)
        outdir = Path(res["outdir"])
        for rel in recipe.outputs:
            src = outdir / rel
            if (src.parent / ".libs" / src.name).exists():  # libtool's wrapper script
                src = src.parent / ".libs" / src.name
            shutil.copy2(src, dest / src.name)
        for lib in (work / "src").rglob("*.so*"):
            if lib.is_file() and ".so" in lib.name and not lib.name.endswith((".la", ".o")):
                shutil.copy2(lib, dest / lib.name)
        return {"outdir": str(dest), "seconds": res["seconds"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
