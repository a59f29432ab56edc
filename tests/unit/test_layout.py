"""The package's layering, checked on its source: imports run one way, and the engine interface
imports none of its implementations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

PKG = REPO / "bakery"
SHARED = {"errors", "proc", "platforms", "target", "toolchain", "templates", "safefs", "oci", "__init__"}
RANK = {"shared": 0, "plan": 1, "recipe": 2, "capture": 3, "bake": 3, "engines": 4, "images": 5, "bench": 5,
        "serve": 6, "scale": 6, "launch": 6, "cli": 7}


def group(module: str) -> str:
    top = module.split(".")[1] if module.count(".") else "__init__"
    if top == "__main__":
        return "cli"  # the entry point
    return top if top in RANK else "shared"  # shared modules, and names of bakery itself (__version__)


def imports(path: Path) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bakery"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((full if full.count(".") <= 2 else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("bakery")]
    return out


# Leaves of the capture (stdlib only) that others share with the wrapper: its flag tables (the
# plan's trust checks) and the target attribute patterns (the bake's text path).
LEAVES = {"bakery.capture.flags", "bakery.capture.attrs"}
MODULES = sorted(p for p in PKG.rglob("*.py") if "data" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_run_one_way(path):
    me = "bakery." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    mine = group(me)
    for target, line in imports(path):
        theirs = group(target)
        if theirs == mine or theirs == "shared" or target in LEAVES:
            continue
        assert RANK[theirs] < RANK[mine], \
            f"{path.relative_to(PKG)}:{line}: {mine} imports {target} ({theirs}): imports run cli -> scale/serve -> " \
            "images -> engines -> bake/capture -> recipe -> plan -> shared"


def test_the_plan_loads_without_the_capture():
    import subprocess
    import sys

    code = "import sys, bakery.plan; print(sorted(m for m in sys.modules if m.startswith('bakery.capture')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['bakery.capture', 'bakery.capture.flags']"


def test_engine_interface_and_implementations_stay_apart():
    for name, forbidden in (("base", {"buildah", "docker"}), ("buildah", {"docker"}), ("docker", {"buildah"})):
        got = {t.split(".")[2] for t, _ in imports(PKG / "engines" / f"{name}.py") if t.startswith("bakery.engines.")}
        assert not got & forbidden, f"engines/{name}.py imports {got & forbidden}"


def test_the_wrapper_imports_only_the_standard_library_and_the_capture_leaves():
    tree = ast.parse((PKG / "capture" / "wrapper.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in mods if m and m.startswith("bakery")} <= LEAVES
    for leaf in ("flags", "attrs"):  # and the leaves themselves only the standard library
        tree = ast.parse((PKG / "capture" / f"{leaf}.py").read_text())
        assert not any(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("bakery") for n in ast.walk(tree))


def test_every_linker_option_that_takes_a_value_is_merged_with_it():
    """libtool splits options from their values (-Wl,-soname -Wl,libx.so.1); the wrapper merges them
    with the table the plan checks them by, so none is left split (as --rpath-link once was)."""
    from bakery.capture import flags, wrapper

    for opt in sorted(flags.LINKER_VALUE_OPTIONS):
        assert wrapper.merge_linker_options([f"-Wl,{opt}", "-Wl,value"]) == [f"-Wl,{opt},value"], opt
    assert wrapper.merge_linker_options(["-Wl,--as-needed", "-Wl,-lfoo"]) == ["-Wl,--as-needed", "-Wl,-lfoo"]


def test_the_readme_lists_every_setting_and_code_reads_none_elsewhere():
    import re

    from bakery.config import VARIABLES

    readme = (PKG.parent / "README.md").read_text()
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M))
    assert listed == set(VARIABLES)
    for path in MODULES:
        if path.name == "config.py":
            continue
        for name in re.findall(r"environ(?:\.get)?\(?\[?[\"']((?:BAKERY|BUILDAH)_[A-Z_]+)", path.read_text()):
            assert False, f"{path.relative_to(PKG)} reads {name} itself: read it through bakery.config.Settings"


@pytest.mark.parametrize("name, value", [("BAKERY_LLVM_MAJORS", "16,x"), ("BAKERY_LLVM_MAJORS", "0"),
                                         ("BAKERY_BAKE_TIMEOUT", "soon"), ("BAKERY_BAKE_TIMEOUT", "-1"),
                                         ("BAKERY_REGISTRY_TIMEOUT", "0"), ("BAKERY_LLVM_VERSION", "sixteen"),
                                         ("BAKERY_BAKE_ISOLATION", "vm"), ("BAKERY_ENGINE", "lxc"),
                                         ("BAKERY_PUSH", "maybe"), ("BAKERY_QUIET", "2"),
                                         ("BAKERY_REGISTRY", "http://reg.example:5000/v2")])
def test_a_bad_setting_is_one_line_naming_it(name, value):
    from bakery.config import Settings
    from bakery.errors import BakeryError

    with pytest.raises(BakeryError) as e:
        Settings.from_env({name: value})
    assert e.value.message.startswith(f"{name}={value!r}") and "\n" not in e.value.message
