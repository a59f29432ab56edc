"""Do a recipe's configure probes answer under capture as with Debian's C compiler?

    .venv/bin/python bench/probes.py recipes/zlib.yaml recipes/gsl.yaml ...

For each recipe, its sources are fetched twice. One tree is built by the capture (bakery's
wrappers around clang-16); the other by the recipe's own build commands with gcc and g++,
unwrapped. Then every header the build generated (a .h present in the built tree but not in
the sources: config.h, zconf.h, json_config.h, ...), CMakeCache.txt's HAVE_* entries and
meson's config headers are compared. Prints one line per recipe, and the differing lines.
Exit status 1 when any recipe differs."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bakery import capture as capturemod
from bakery import recipe as recipemod
from bakery import toolchain as toolchainmod
from bakery.capture import run as runmod
from bakery.capture import sources as sourcesmod

_HAVE = re.compile(r"^(HAVE_|.*_HAVE_)\w*:\w+=.*$", re.M)


def generated(tree: Path, pristine: dict[str, bytes]) -> dict[str, str]:
    """What the configure step wrote: headers it made or changed (config.h, zconf.h), the top
    Makefile, CMakeCache.txt's probe results; by path in the tree."""
    out: dict[str, str] = {}
    for p in tree.rglob("*"):
        rel = str(p.relative_to(tree))
        if not p.is_file() or p.is_symlink():
            continue
        if (p.suffix == ".h" or rel == "Makefile") and pristine.get(rel) != p.read_bytes():
            out[rel] = p.read_text(errors="replace")
        elif p.name == "CMakeCache.txt":
            out[rel] = "\n".join(sorted(m.group(0) for m in _HAVE.finditer(p.read_text(errors="replace"))))
    return out


def compare(recipe_path: Path, tc, jobs: int) -> list[str]:
    recipe = recipemod.load(recipe_path)
    work = Path(tempfile.mkdtemp(prefix=f"bakery-probes-{recipe.name}-"))
    try:
        src = work / "pristine"
        sourcesmod.fetch_all(recipe.sources, src)
        pristine = {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*")
                    if p.is_file() and not p.is_symlink() and (p.suffix == ".h" or p.name == "Makefile")}
        # Under capture (the stable capture folder keeps the built tree).
        capturemod.capture(recipe, work / "bundle", tc, workdir=work / "capture", jobs=jobs)
        captured = generated(work / "capture" / "src", pristine)
        # With gcc, unwrapped: the recipe's own commands, an empty shim folder.
        gcc_root = work / "gcc" / "src"
        shutil.copytree(src, gcc_root, symlinks=True)
        empty = work / "gcc" / "shims"
        empty.mkdir()
        compilers = {"CC": shutil.which("gcc") or "gcc", "CXX": shutil.which("g++") or "g++"}
        runmod.run_build(recipe, gcc_root, empty, compilers, jobs, work / "gcc" / "build.log", tc)
        reference = generated(gcc_root, pristine)
        # Paths of the two trees differ: compare with each tree's own root taken out.
        diffs = []
        for rel in sorted(set(captured) | set(reference)):
            a = reference.get(rel, "").replace(str(gcc_root), "<src>").splitlines()
            b = captured.get(rel, "").replace(str(work / "capture" / "src"), "<src>").splitlines()
            a = [line for line in a if not _compiler_line(line)]
            b = [line for line in b if not _compiler_line(line)]
            if a != b:
                diffs += [f"  {rel}: {d}" for d in difflib.unified_diff(a, b, "gcc", "capture", n=0, lineterm="")
                          if d[:1] in "+-" and not d.startswith(("+++", "---"))]
        return [f"{recipe.name}: {len(set(captured) | set(reference))} generated files compared, "
                f"{'identical' if not diffs else f'{len(diffs)} lines differ'}", *diffs]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compiler_line(line: str) -> bool:
    """Lines that name the compiler itself, not a probe's answer (CMake's compiler id and path)."""
    return bool(re.search(r"CMAKE_\w*COMPILER|gcc|clang|GNUC|\bCC\b|\bCXX\b|wrapper|shims|bakery-probes", line))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", type=Path, nargs="+")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    tc = toolchainmod.find()
    differ = False
    for r in args.recipes:
        lines = compare(r, tc, args.jobs)
        print("\n".join(lines), flush=True)
        differ |= len(lines) > 1
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
