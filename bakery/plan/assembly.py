"""Assembling a plan from a capture's events (the capture side: trusted input)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from bakery import PLAN_MEDIA_TYPE, __version__
from bakery.capture.flags import sha256_file
from bakery.errors import BakeryError, PlanRefused
from bakery.plan.model import SCHEMA_VERSION, FileRef
from bakery.plan.trust import (
    _LINKER_VALUE,
    FILE_OPTIONS,
    MAX_PLAN_BYTES,
    _linker_tokens_problem,
    compile_flag_problem,
    file_tokens,
    link_flag_problem,
    safe_name,
    validate,
)

# -- reading the capture's events ------------------------------------------------

def read_events(path: Path) -> list[dict]:
    if not path.exists():
        raise BakeryError("the build compiled or linked nothing through bakery's wrappers",
                          "check that the build uses $CC/$CXX or a compiler found on PATH")
    events = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise BakeryError(f"{path}:{n}: corrupt capture event") from None
    return events


def _sha(path: Path) -> str:
    return sha256_file(str(path))


def _wl_tokens(args) -> list[str]:
    toks = []
    for a in args:
        if isinstance(a, str) and a.startswith("-Wl,"):
            toks += a[4:].split(",")
        elif isinstance(a, dict) and "wl" in a:
            toks += a["wl"]
    return toks


def soname_of(args) -> str | None:
    toks = _wl_tokens(args)
    for i, t in enumerate(toks):
        if t in ("-soname", "-h", "--soname") and i + 1 < len(toks):
            return toks[i + 1]
        if t.startswith(("-soname=", "--soname=")):
            return t.split("=", 1)[1]
    return None


def assemble(recipe, toolchain, events: list[dict], *, root: Path, outdir: Path, store: Path, bundle: Path,
             levels: Sequence[str] = ()) -> dict:
    """Turn the capture's events into a plan and copy what it names into ``bundle``."""
    a = _Assembly(events, root)
    declared = a.choose_links(recipe.outputs, outdir)
    plan_links = a.plan_links(declared)
    a.drop_refused_module_flags()
    a.copy_files(store, bundle)
    return {
        "schemaVersion": SCHEMA_VERSION,
        "mediaType": PLAN_MEDIA_TYPE,
        "app": {"name": recipe.name, "version": recipe.version},
        "recipe": {"digest": recipe.digest, "entrypoint": recipe.entrypoint, "test": recipe.test,
                   "packages": list(recipe.runtime_packages)},
        "toolchain": {"llvm_major": toolchain.major, "version": toolchain.version,
                      "triple": toolchain.triple, "family": toolchain.family},
        "preserve": {"flags": list(recipe.preserve_flags), "libs": list(recipe.preserve_libs)},
        "modules": a.modules,
        "objects": a.objects,
        "files": a.files,
        "links": plan_links,
        "capture": {"bakery": __version__, "levels": list(levels),
                    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "dropped": a.dropped, "translation_units": sum(1 for e in events if e.get("event") == "compile")},
    }


class _Assembly:
    """The steps of ``assemble``: the links the declared outputs need (dependencies first), their
    items converted to plan items, the refused flags dropped with a note, the files copied."""

    def __init__(self, events: list[dict], root: Path):
        self.root = root
        links = [e for e in events if e.get("event") == "link"]
        self.by_output = {e["output"]: e for e in links}      # the last link of a path wins
        self.by_sha = {e["sha"]: e for e in links}
        self.compiles: dict[str, dict] = {}
        for e in events:
            if e.get("event") == "compile":
                self.compiles.setdefault(e["bc"], e)
        self.chosen: dict[str, dict] = {}                     # output path -> link event, deps first
        self.names: dict[str, dict[str, str]] = {}            # output path -> {declared name: as declared}
        self.ids: dict[str, str] = {}
        self.modules: dict[str, dict] = {}
        self.objects: dict[str, dict] = {}
        self.files: dict[str, dict] = {}
        self.dropped: list[dict] = []

    def find_output(self, rel: str) -> tuple[dict, bool]:
        """The link that made ``rel`` (symlinks resolved), and whether ``rel`` is that link's
        output or a copy of it (by content: ``cp``, ``install``, a hard link), not libtool's
        wrapper script for it."""
        if rel in self.by_output:
            return self.by_output[rel], True
        path = self.root / rel
        sha = _sha(path) if path.is_file() else None
        if sha in self.by_sha:                                # copied or installed after the link
            return self.by_sha[sha], True
        d, base = os.path.split(rel)
        for cand in (os.path.join(d, ".libs", base), os.path.join(d, ".libs", "lt-" + base)):
            if cand in self.by_output:                        # libtool's wrapper script
                return self.by_output[cand], False
        seen = ", ".join(sorted(self.by_output)) or "none"
        raise BakeryError(f"output {rel!r} was not produced by a link the capture saw", f"links seen: {seen}")

    def visit(self, ev: dict, stack: tuple = ()) -> str:
        out = ev["output"]
        if out in self.ids:
            return self.ids[out]
        if out in stack:
            raise BakeryError(f"link cycle through {out}")
        for a in ev["args"]:
            if isinstance(a, dict) and "shared" in a:
                dep = self.by_sha.get(a["shared"])
                if dep is None:
                    raise BakeryError(f"{out} links {a['path']}, which no captured link produced")
                self.visit(dep, stack + (out,))
        self.ids[out] = f"L{len(self.ids)}"
        self.chosen[out] = ev
        return self.ids[out]

    def choose_links(self, outputs, outdir: Path) -> list[str]:
        """The link of each declared output and what it links; returns the declared link outputs.
        Each declared output's own name is kept (``names``): one that is a copy, a hard link or a
        symlink of a linked output is installed under it too, not dropped as the same link."""
        declared = []
        for rel in outputs:
            ev, same_file = self.find_output(os.path.relpath((outdir / rel).resolve(), self.root.resolve()))
            self.visit(ev)
            declared.append(ev["output"])
            if same_file:
                self.names.setdefault(ev["output"], {})[os.path.basename(os.path.normpath(rel))] = rel
        return declared

    def convert(self, a):
        if isinstance(a, str):
            return a
        if "module" in a:
            sha = a["module"]
            c = self.compiles.get(sha, {})
            m = self.modules[sha] = {"path": f"bitcode/{sha}.bc", "sha256": sha, "source": c.get("src", "?"),
                                     "lang": c.get("lang", "c"), "flags": c.get("flags", ["-O2"])}
            if c.get("stage"):
                m["stage"] = c["stage"]
            if c.get("untargeted"):
                m["untargeted"] = True
            if c.get("variants"):
                m["variants"] = [{"level": v["level"], "path": f"bitcode/{v['bc']}.bc", "sha256": v["bc"]}
                                 for v in c["variants"]]
                m["macros"] = c.get("macros", [])
            return {"module": sha}
        if "object" in a:
            self.objects[a["object"]] = {"path": f"objects/{a['object']}.o", "sha256": a["object"],
                                         "name": a.get("name", "")}
            return {"object": a["object"]}
        if "archive" in a:
            return {"archive": a["archive"], "members": [self.convert(m) for m in a["members"]]}
        if "shared" in a:
            return {"link": self.ids[self.by_sha[a["shared"]]["output"]]}
        if "file" in a:
            self.files[a["file"]] = {"path": f"files/{a['file']}", "sha256": a["file"]}
            return {"file": a["file"], "wl": a["wl"], "at": a["at"], "prefix": a["prefix"]}
        raise BakeryError(f"unknown link item {a!r}")

    def plan_links(self, declared: list[str]) -> list[dict]:
        plan_links: list[dict] = []
        for out, ev in self.chosen.items():
            args = []
            for a in merge_split_options(ev["args"]):
                why = link_flag_problem(a) if isinstance(a, str) else _file_item_problem(a) if "file" in a else None
                if why:
                    self.dropped.append({"link": out, "flag": a if isinstance(a, str) else "-Wl," + ",".join(a["wl"]),
                                         "why": why})
                    continue
                args.append(self.convert(a))
            soname = soname_of(args)
            kind = "shared" if ev.get("shared") else "executable"
            install = os.path.basename(out) if kind == "executable" or out in declared else \
                (soname or os.path.basename(out))
            link = {"id": self.ids[out], "output": out, "kind": kind, "driver": ev["driver"],
                    "soname": soname, "install": install}
            also = sorted(set(self.names.get(out, ())) - {install})
            if also:
                link["also"] = also
            plan_links.append(link | {"declared": out in declared, "args": args})
        self.check_install_names(plan_links)
        return plan_links

    def check_install_names(self, plan_links: list[dict]) -> None:
        """What trust.validate would refuse at every bake, said now, naming the declared output."""
        owner: dict[str, str] = {}
        for link in plan_links:
            for name in (link["install"], *link.get("also", ())):
                declared = self.names.get(link["output"], {}).get(name, link["output"])
                if not safe_name(name):
                    raise BakeryError(f"output {declared!r}: {name!r} is not a plain file name "
                                      "(letters, digits, _ . + -) to install it under")
                if name in owner:
                    raise BakeryError(f"outputs {owner[name]!r} and {declared!r} would both be installed as {name!r}",
                                      "declare outputs whose file names differ")
                owner[name] = declared

    def drop_refused_module_flags(self) -> None:
        for m in self.modules.values():
            bad = [f for f in m["flags"] if compile_flag_problem(f)]
            m["flags"] = [f for f in m["flags"] if f not in bad]
            self.dropped += [{"module": m["source"], "flag": f, "why": compile_flag_problem(f)} for f in bad]

    def copy_files(self, store: Path, bundle: Path) -> None:
        bundle.mkdir(parents=True, exist_ok=True)
        for sub, table, src_dir, suffix in (("bitcode", self.modules, "bc", ".bc"),
                                            ("objects", self.objects, "native", ""), ("files", self.files, "files", "")):
            (bundle / sub).mkdir(exist_ok=True)
            for sha, entry in table.items():
                shutil.copyfile(store / src_dir / (sha + suffix), bundle / entry["path"])
                for v in entry.get("variants", []):
                    shutil.copyfile(store / src_dir / (v["sha256"] + suffix), bundle / v["path"])


def merge_split_options(args: list) -> list:
    """``-Wl,-rpath -Wl,DIR`` (libtool's style) -> ``-Wl,-rpath,DIR``: the linker sees the same
    tokens, and the option is checked with its value."""
    out: list = []
    for a in args:
        if isinstance(a, str) and a.startswith("-Wl,") and out and isinstance(out[-1], str) \
                and out[-1].startswith("-Wl,") and out[-1].split(",")[-1] in _LINKER_VALUE:
            out[-1] += "," + a[4:]
        else:
            out.append(a)
    return out


def _file_item_problem(a: dict) -> str | None:
    """Why the capture's bundle file for a linker option is not kept (a linker script, say)."""
    wl, at, prefix = a.get("wl"), a.get("at"), a.get("prefix", "")
    if not isinstance(wl, list) or type(at) is not int or not 0 <= at < len(wl):
        return "not a file of a linker option"
    if prefix and prefix.removesuffix("=") not in FILE_OPTIONS:
        return f"{prefix.removesuffix('=')} is not a version script or dynamic list option"
    return _linker_tokens_problem(file_tokens(FileRef(a.get("file", ""), tuple(wl), at, prefix))) \
        if prefix or at > 0 else None


def save(plan: dict, bundle: Path) -> Path:
    """Write the bundle's plan.json, checked first as every bake checks it (trust.load): a plan
    the bake would refuse fails the capture with the bake's message instead of being written."""
    path = bundle / "plan.json"
    text = json.dumps(plan, indent=1, sort_keys=False) + "\n"
    if len(text.encode()) > MAX_PLAN_BYTES:
        raise PlanRefused(f"plan refused: {path} is larger than {MAX_PLAN_BYTES >> 20} MiB")
    validate(json.loads(text), bundle)  # the JSON the bake will read, not the dict
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
