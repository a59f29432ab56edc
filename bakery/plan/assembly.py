"""Assembling a plan from a capture's events (the capture side: trusted input)."""

from __future__ import annotations

import collections
import datetime
import json
import os
import re
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
                    "dropped": a.dropped, "translation_units": sum(1 for e in events if e.get("event") == "compile"),
                    "probes": dict(sorted(a.probes.items())), "decisions": list(a.decisions.values())},
    }


# What a module's fallback (the wrapper's record of it) means for the bake.
_FALLBACK = {
    "simplify": "the capture's half of its pipeline failed ({why}): the bake runs all of it",
    "untarget": "its baseline target attributes stayed in ({why}): the bake rewrites them",
    "detect": "{why}: its generic capture is baked for every target",
    "variant": "no {level} capture ({why}): bakes for {level} take the next lower one",
}
# Why a native object linked into an output is not bitcode, by the wrapper's event that made it.
_NATIVE = {
    "assembly": "assembly",
    "language": "{lang}, which is not in capture.languages",
    "stdin": "compiled from standard input, which bakery does not capture",
    "no-source": "compiled from no C, C++, Fortran or assembly source (IR?)",
}
_OUTSIDE = ("not compiled through bakery's wrappers (prebuilt, compiled by a compiler called by its full path, "
            "or changed after its compile by objcopy or strip)")


class _Assembly:
    """The steps of ``assemble``: the links the declared outputs need (dependencies first), their
    items converted to plan items, the refused flags dropped with a note, what was linked as it
    was recorded as a decision, the files copied."""

    def __init__(self, events: list[dict], root: Path):
        self.root = root
        self.by_output: dict[str, dict] = {}                  # the last link of a path wins
        self.by_sha: dict[str, dict] = {}
        self.compiles: dict[str, dict] = {}
        self.natives: dict[str, dict] = {}                    # object sha -> the call run as it was
        self.untouched: dict[str, dict] = {}                  # what such a call made, by path
        self.assembled: dict[str, str] = {}                   # assembly made with -S -> its source
        self.probes: collections.Counter[str] = collections.Counter()
        for e in events:
            kind = e.get("event")
            if kind == "link" or (kind == "error" and e.get("step") == "link"):  # a failed recording too
                self.by_output[e["output"]] = e
                if e.get("sha"):
                    self.by_sha[e["sha"]] = e
            elif kind == "compile":
                self.compiles.setdefault(e["bc"], e)
            elif kind in ("native", "probe"):
                if e.get("obj"):
                    self.natives.setdefault(e["obj"], e)
                if e.get("out"):
                    self.untouched[e["out"]] = e
                if kind == "probe":
                    self.probes[e.get("kind", "other")] += 1
                elif e.get("why") == "assembly-output" and e.get("out"):
                    self.assembled[e["out"]] = e.get("src", "?")
        self.decisions: dict[tuple, dict] = {}                # (kind, subject) -> decision
        self.current = ""                                     # the output whose link is converted
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
        made = self.untouched.get(rel)
        how = f"it was made by a call bakery ran as it was ({made.get('kind') or made.get('why')} " \
              f"{'probe' if made['event'] == 'probe' else 'compile'}); " if made else ""
        raise BakeryError(f"output {rel!r} was not produced by a link the capture saw", f"{how}links seen: {seen}")

    def visit(self, ev: dict, stack: tuple = ()) -> str:
        out = ev["output"]
        if ev["event"] == "error":
            raise BakeryError(f"the link of {out} could not be recorded: {ev.get('what', '?')}",
                              "the build linked it, but bakery's wrapper failed to resolve its inputs "
                              "(the kept work tree's store/events.jsonl has the event)")
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

    def decide(self, kind: str, what: str, why: str, obj: str | None = None) -> None:
        """A decision of the capture, once per subject, with every output link that takes it."""
        d = self.decisions.setdefault((kind, obj or what, why), {"kind": kind, "what": what, "why": why, "links": []})
        if obj:
            d["object"] = obj
        if self.current not in d["links"]:
            d["links"].append(self.current)

    def native_why(self, sha: str, name: str) -> tuple[str, str]:
        """What to call a native object, and why it is not bitcode."""
        e = self.natives.get(sha)
        if e is not None and e["event"] == "probe":
            return name, f"made by a {e.get('kind')} probe, which bakery runs as it is"
        if e is not None:
            src = e.get("src") or name
            if e.get("why") == "assembly" and src in self.assembled:
                return src, f"assembly made with -S from {self.assembled[src]}, then assembled"
            return src, _NATIVE.get(e.get("why", ""), "{why}").format(lang=e.get("lang", "?"), why=e.get("why"))
        made = self.by_sha.get(sha)
        if made is not None and made["event"] == "link":
            return made["output"], "the output of a link of its own (-r?), whose inputs are not linked as bitcode"
        return name or sha[:12], _OUTSIDE

    def given(self, a: dict) -> str:
        """A link input left as the build gave it (a system library, a linker script, no file):
        recorded, or an error where a bake would link without it or refuse it."""
        text, kind, out = a["given"], a.get("as"), self.current
        why = link_flag_problem(text)
        if kind == "not-elf":  # the bake refuses a linker script by path (trust.system_input): lld reads what it names
            lib = re.fullmatch(r"lib([A-Za-z0-9_][A-Za-z0-9_.+-]*)\.(so|a)", os.path.basename(text))
            raise BakeryError(f"{out}: link input {text!r} is neither an object, an archive nor a shared library "
                              "(a linker script?): a bake cannot link it",
                              f"link it as -l{lib.group(1)} (as the build's compiler would find it)" if lib else
                              "link what it names (the library itself, or -lNAME) instead")
        if kind == "system-library":
            if why:
                raise BakeryError(f"{out}: library {text!r} would be dropped ({why}): a bake would link without it",
                                  "link it from a system library directory (/usr/lib, /usr/local/lib, /opt), "
                                  "or build it in the tree")
            self.decide("system-library", text, "not built in the tree: the bake links the system's")
        return text  # not a file when linked (an option's value?): kept, or dropped with a note

    def convert(self, a):
        if isinstance(a, str):
            return a
        if "module" in a:
            sha = a["module"]
            c = self.compiles.get(sha)
            if c is None:
                raise BakeryError(f"{self.current} links bitcode {sha[:12]} that no compile of this capture made")
            m = self.modules[sha] = {"path": f"bitcode/{sha}.bc", "sha256": sha, "source": c.get("src", "?"),
                                     "lang": c.get("lang", "c"), "flags": c.get("flags", ["-O2"])}
            for f in c.get("fallbacks", ()):
                self.decide("fallback", m["source"], _FALLBACK.get(f.get("step"), "{step}: {why}").format(
                    step=f.get("step"), why=f.get("why", "?"), level=f.get("level", "?")))
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
            what, why = self.native_why(a["object"], a.get("name", ""))
            self.decide("native-object", what, why, obj=a["object"])
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
            self.current = out
            for a in merge_split_options(ev["args"]):
                if isinstance(a, dict) and "given" in a:
                    a = self.given(a)
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
