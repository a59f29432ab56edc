"""The bake plan: what a capture saw, and all a bake may do.

A plan arrives from a registry and drives a compiler on a node, so ``load()``
treats it as untrusted: schema first, then every flag through an allow-list,
every path confined to the bundle, every file checked against its digest
before use. Nothing is run by this module.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path, PurePosixPath

import jsonschema

from . import PLAN_MEDIA_TYPE, __version__
from .capture.wrapper import sha256_file
from .errors import BakeryError, PlanRefused

SCHEMA_VERSION = 1


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
             levels: list[str] = ()) -> dict:
    """Turn the capture's events into a plan and copy what it names into ``bundle``."""
    links = [e for e in events if e.get("event") == "link"]
    by_output = {e["output"]: e for e in links}      # the last link of a path wins
    by_sha = {e["sha"]: e for e in links}
    chosen: dict[str, dict] = {}                     # output path -> link event, deps first
    ids: dict[str, str] = {}

    def find_output(rel: str) -> dict:
        path = root / rel
        if rel in by_output:
            return by_output[rel]
        sha = _sha(path) if path.is_file() else None
        if sha in by_sha:                                   # copied or installed after the link
            return by_sha[sha]
        d, base = os.path.split(rel)
        for cand in (os.path.join(d, ".libs", base), os.path.join(d, ".libs", "lt-" + base)):
            if cand in by_output:                         # libtool's wrapper script
                return by_output[cand]
        seen = ", ".join(sorted(by_output)) or "none"
        raise BakeryError(f"output {rel!r} was not produced by a link the capture saw",
                          f"links seen: {seen}")

    def visit(ev: dict, stack: tuple = ()) -> str:
        out = ev["output"]
        if out in ids:
            return ids[out]
        if out in stack:
            raise BakeryError(f"link cycle through {out}")
        for a in ev["args"]:
            if isinstance(a, dict) and "shared" in a:
                dep = by_sha.get(a["shared"])
                if dep is None:
                    raise BakeryError(f"{out} links {a['path']}, which no captured link produced")
                visit(dep, stack + (out,))
        ids[out] = f"L{len(ids)}"
        chosen[out] = ev
        return ids[out]

    declared = []
    for rel in recipe.outputs:
        rel_root = os.path.relpath((outdir / rel).resolve(), root.resolve())
        ev = find_output(rel_root)
        visit(ev)
        declared.append(ev["output"])

    modules, objects, files = {}, {}, {}
    compiles = {}
    for e in events:
        if e.get("event") == "compile":
            compiles.setdefault(e["bc"], e)

    def convert(a):
        if isinstance(a, str):
            return a
        if "module" in a:
            sha = a["module"]
            c = compiles.get(sha, {})
            modules[sha] = {"path": f"bitcode/{sha}.bc", "sha256": sha, "source": c.get("src", "?"),
                            "lang": c.get("lang", "c"), "flags": c.get("flags", ["-O2"])}
            if c.get("variants"):
                modules[sha]["variants"] = [{"level": v["level"], "path": f"bitcode/{v['bc']}.bc",
                                             "sha256": v["bc"]} for v in c["variants"]]
                modules[sha]["macros"] = c.get("macros", [])
            return {"module": sha}
        if "object" in a:
            objects[a["object"]] = {"path": f"objects/{a['object']}.o", "sha256": a["object"], "name": a.get("name", "")}
            return {"object": a["object"]}
        if "archive" in a:
            return {"archive": a["archive"], "members": [convert(m) for m in a["members"]]}
        if "shared" in a:
            return {"link": ids[by_sha[a["shared"]]["output"]]}
        if "file" in a:
            files[a["file"]] = {"path": f"files/{a['file']}", "sha256": a["file"]}
            return {"file": a["file"], "wl": a["wl"], "at": a["at"], "prefix": a["prefix"]}
        raise BakeryError(f"unknown link item {a!r}")

    plan_links, dropped = [], []
    for out, ev in chosen.items():
        args = []
        for a in ev["args"]:
            if isinstance(a, str):
                why = link_flag_problem(a)
                if why:
                    dropped.append({"link": out, "flag": a, "why": why})
                    continue
            args.append(convert(a))
        soname = soname_of(args)
        kind = "shared" if ev.get("shared") else "executable"
        install = os.path.basename(out) if kind == "executable" or out in declared else (soname or os.path.basename(out))
        plan_links.append({"id": ids[out], "output": out, "kind": kind, "driver": ev["driver"],
                           "soname": soname, "install": install, "declared": out in declared, "args": args})

    for m in modules.values():
        bad = [f for f in m["flags"] if compile_flag_problem(f)]
        m["flags"] = [f for f in m["flags"] if f not in bad]
        dropped += [{"module": m["source"], "flag": f, "why": compile_flag_problem(f)} for f in bad]

    bundle.mkdir(parents=True, exist_ok=True)
    for sub, table, src_dir, suffix in (("bitcode", modules, "bc", ".bc"), ("objects", objects, "native", ""),
                                        ("files", files, "files", "")):
        (bundle / sub).mkdir(exist_ok=True)
        for sha, entry in table.items():
            shutil.copyfile(store / src_dir / (sha + suffix), bundle / entry["path"])
            for v in entry.get("variants", []):
                shutil.copyfile(store / src_dir / (v["sha256"] + suffix), bundle / v["path"])

    return {
        "schemaVersion": SCHEMA_VERSION,
        "mediaType": PLAN_MEDIA_TYPE,
        "app": {"name": recipe.name, "version": recipe.version},
        "recipe": {"digest": recipe.digest, "entrypoint": recipe.entrypoint, "test": recipe.test},
        "toolchain": {"llvm_major": toolchain.major, "version": toolchain.version,
                      "triple": toolchain.triple, "family": toolchain.family},
        "preserve": {"flags": list(recipe.preserve_flags), "libs": list(recipe.preserve_libs)},
        "modules": modules,
        "objects": objects,
        "files": files,
        "links": plan_links,
        "capture": {"bakery": __version__, "levels": list(levels), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "dropped": dropped, "translation_units": sum(1 for e in events if e.get("event") == "compile")},
    }


def save(plan: dict, bundle: Path) -> Path:
    path = bundle / "plan.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


# -- the untrusted side ----------------------------------------------------------

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_F_FLAG = re.compile(r"^-f(no-)?[A-Za-z0-9][A-Za-z0-9-]*(=[A-Za-z0-9_.,+-]+)?$")
_M_FLAG = re.compile(r"^-m(no-)?[a-z0-9][a-z0-9.-]*(=[A-Za-z0-9_.+-]+)?$")
_DENY_F = ("-fplugin", "-fpass-plugin", "-fprofile", "-fsanitize-blacklist", "-fsanitize-ignorelist",
           "-fcrash-diagnostics", "-fmodules", "-fuse-ld", "-fembed", "-fdebug-prefix-map", "-ffile-prefix-map",
           "-fmacro-prefix-map", "-fcoverage", "-fxray", "-fsave-optimization-record", "-foptimization-record")
_TARGET_FLAGS = ("-march=", "-mcpu=", "-mtune=", "-mnative")
SYSTEM_LIB_DIRS = ("/usr/lib", "/usr/local/lib", "/lib", "/usr/lib64", "/lib64", "/opt")
_COMMON = {"-pthread", "-fopenmp", "-g", "-g0", "-g1", "-g2", "-g3", "-ggdb", "-gline-tables-only"}
_LINK_WORDS = {"-shared", "-static", "-pie", "-no-pie", "-rdynamic", "-static-libgcc", "-static-libstdc++",
               "-nostartfiles", "-nodefaultlibs", "-nostdlib", "-fPIC", "-fpic", "-fPIE", "-fpie",
               "-Qunused-arguments"} | _COMMON
_OPT = re.compile(r"^-O([0-3sz]|fast|g)?$")
_LINKER_WORDS = {"-O1", "-O2", "-O0", "--as-needed", "--no-as-needed", "--gc-sections", "--no-gc-sections",
                 "--no-undefined", "-Bstatic", "-Bdynamic", "-Bsymbolic", "-Bsymbolic-functions",
                 "--export-dynamic", "-E", "--whole-archive", "--no-whole-archive", "--start-group",
                 "--end-group", "-(", "-)", "--enable-new-dtags", "--disable-new-dtags", "--eh-frame-hdr",
                 "-s", "--strip-all", "-S", "--strip-debug", "--sort-common", "--relax", "--no-relax",
                 "--allow-shlib-undefined", "--no-allow-shlib-undefined", "--copy-dt-needed-entries",
                 "--no-copy-dt-needed-entries", "--warn-common", "--fatal-warnings", "--no-fatal-warnings",
                 "--build-id", "-znodelete", "-znow", "-zrelro", "-zdefs", "-znoexecstack", "--icf=all", "--icf=safe"}
_RPATH_OPTIONS = {"-rpath", "--rpath", "-R", "-rpath-link", "--rpath-link"}
_LINKER_VALUE = {"-soname", "-h", "--soname", "-z", "--hash-style", "--build-id", "--icf", "-O",
                 "--compress-debug-sections"} | _RPATH_OPTIONS
_FILE_OPTIONS = ("--version-script", "-version-script", "-T", "--script", "--dynamic-list")
_Z_WORDS = {"relro", "norelro", "now", "lazy", "noexecstack", "execstack", "defs", "nodelete", "origin",
            "separate-code", "noseparate-code", "muldefs", "text", "notext"}


def compile_flag_problem(flag: str) -> str | None:
    """Why a module flag is refused, or None. Allow-list: opt level, codegen -f/-m flags, debug info."""
    if _OPT.match(flag) or flag in _COMMON:
        return None
    if flag.startswith(_TARGET_FLAGS):
        return "the target is chosen at bake time, not by the plan"
    if flag.startswith("-f"):
        if flag.startswith(_DENY_F):
            return "reads or writes files, or loads code"
        return None if _F_FLAG.match(flag) else "not an allowed -f flag"
    if flag.startswith("-m"):
        return None if _M_FLAG.match(flag) else "not an allowed -m flag"
    return "not in the allow-list of codegen flags"


def _linker_tokens_problem(tokens: list[str]) -> str | None:
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if "plugin" in t or "load-pass" in t:
            return "linker plugins load code"
        if t in _LINKER_WORDS:
            i += 1
            continue
        key, eq, val = t.partition("=")
        if key in _LINKER_VALUE:
            if not eq:
                if i + 1 >= len(tokens):
                    return f"{t} needs a value"
                val = tokens[i + 1]
                i += 1
            if key == "-z" and val not in _Z_WORDS:
                return f"-z {val} is not allowed"
            if key in _RPATH_OPTIONS and not _rpath_ok(val):
                return f"rpath {val!r} is neither $ORIGIN-relative nor a system directory"
            if key in ("-soname", "-h", "--soname") and not _SAFE_NAME.match(val):
                return f"soname {val!r} is not a plain file name"
            i += 1
            continue
        if t.startswith("-z") and t[2:] in _Z_WORDS:
            i += 1
            continue
        if t.startswith("/") and _rpath_ok(t):  # libtool: -Wl,-rpath -Wl,/usr/lib
            i += 1
            continue
        if t.startswith("$ORIGIN"):
            i += 1
            continue
        if _SAFE_NAME.match(t) and i > 0:  # the value of a split option (-Wl,-soname -Wl,libx.so.1)
            i += 1
            continue
        return f"linker option {t!r} is not in the allow-list"
    return None


def _rpath_ok(rpath: str) -> bool:
    return all(_rpath_dir_ok(p) for p in rpath.split(":") if p)


def _rpath_dir_ok(path: str) -> bool:
    if path.startswith(("$ORIGIN", "${ORIGIN}")):
        return True  # relative to the installed binary: cannot reach the build host
    return path.startswith(SYSTEM_LIB_DIRS) and ".." not in PurePosixPath(path).parts


def link_flag_problem(flag: str) -> str | None:
    """Why a link argument is refused, or None."""
    if flag.startswith("@"):
        return "response files are not allowed"
    if flag in _LINK_WORDS:
        return None
    if _OPT.match(flag):
        return None
    if flag.startswith("-l"):
        return None if re.match(r"^-l:?[A-Za-z0-9_.+-]+$", flag) else "not a plain library name"
    if flag.startswith("-L"):
        d = flag[2:]
        return None if d.startswith(SYSTEM_LIB_DIRS) and ".." not in PurePosixPath(d).parts else \
            f"library directory {d!r} is outside the system library directories"
    if flag.startswith("-Wl,"):
        return _linker_tokens_problem(flag[4:].split(","))
    if flag.startswith("/"):
        if flag.startswith(SYSTEM_LIB_DIRS) and ".." not in PurePosixPath(flag).parts and \
                re.search(r"\.(a|so(\.[0-9]+)*|o)$", flag):
            return None
        return f"path {flag!r} is outside the bundle and the system library directories"
    if flag.startswith(("-B", "-specs", "--specs", "-o", "-fuse-ld", "--ld-path", "-Xclang", "-Xlinker",
                        "-fplugin", "--config", "-target", "--target", "--sysroot", "-isysroot")):
        return "may load code or change the toolchain"
    if flag.startswith(("-f", "-m")):
        return compile_flag_problem(flag)
    if flag.startswith(("-I", "-D", "-U", "-W", "-std=", "-include", "-isystem", "-M", "-x")):
        return "a compile-only flag, not needed to link"
    return "not in the allow-list of link flags"


def _schema() -> dict:
    return json.loads(resources.files("bakery").joinpath("schemas/plan.schema.json").read_text())


def _confined(rel: str, bundle: Path, what: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise PlanRefused(f"plan refused: {what} path {rel!r} is outside the bundle")
    full = (bundle / p).resolve()
    if bundle.resolve() not in full.parents:
        raise PlanRefused(f"plan refused: {what} path {rel!r} is outside the bundle")
    return full


def validate(plan: dict, bundle: Path | None = None) -> None:
    """Refuse a plan that could make the bake do anything but compile and link its own files."""
    try:
        jsonschema.Draft202012Validator(_schema()).validate(plan)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise PlanRefused(f"plan refused: {where}: {e.message}") from None
    if plan["mediaType"] != PLAN_MEDIA_TYPE:
        raise PlanRefused(f"plan refused: media type {plan['mediaType']!r}, expected {PLAN_MEDIA_TYPE}")
    for sha, m in plan["modules"].items():
        if m["sha256"] != sha or m["path"] != f"bitcode/{sha}.bc":
            raise PlanRefused(f"plan refused: module {sha[:12]} names {m['path']!r}")
        for v in m.get("variants", []):
            if v["path"] != f"bitcode/{v['sha256']}.bc":
                raise PlanRefused(f"plan refused: variant {v['level']} of {m.get('source', sha)} names {v['path']!r}")
        for f in m["flags"]:
            why = compile_flag_problem(f)
            if why:
                raise PlanRefused(f"plan refused: flag {f!r} of {m.get('source', sha)}: {why}")
    for kind, table, fmt in (("object", plan["objects"], "objects/{}.o"), ("file", plan["files"], "files/{}")):
        for sha, o in table.items():
            if o["sha256"] != sha or o["path"] != fmt.format(sha):
                raise PlanRefused(f"plan refused: {kind} {sha[:12]} names {o['path']!r}")
    for f in plan["preserve"]["flags"]:
        why = compile_flag_problem(f)
        if why:
            raise PlanRefused(f"plan refused: preserved flag {f!r}: {why}")
    for f in plan["preserve"]["libs"]:
        why = link_flag_problem(f)
        if why:
            raise PlanRefused(f"plan refused: preserved lib {f!r}: {why}")
    ids = set()
    installs = set()
    for link in plan["links"]:
        out = PurePosixPath(link["output"])
        if out.is_absolute() or ".." in out.parts:
            raise PlanRefused(f"plan refused: link output {link['output']!r} is outside the bundle")
        if not _SAFE_NAME.match(link["install"]) or link["install"] in installs:
            raise PlanRefused(f"plan refused: install name {link['install']!r}")
        installs.add(link["install"])
        prev = None
        for a in link["args"]:
            _check_link_item(a, plan, ids, link["output"], prev)
            prev = a
        ids.add(link["id"])
    if bundle is not None:
        for table, what in ((plan["modules"], "bitcode"), (plan["objects"], "object"), (plan["files"], "file")):
            for entry in table.values():
                _confined(entry["path"], bundle, what)
                for v in entry.get("variants", []):
                    _confined(v["path"], bundle, what)


def _check_link_item(a, plan: dict, earlier_ids: set, output: str, prev=None) -> None:
    if isinstance(a, str):
        if a.startswith("-Wl,") and a.split(",")[-1] in _FILE_OPTIONS:
            a = ",".join(a.split(",")[:-1])  # its file is the next item, checked there
            if a == "-Wl":
                return
        why = link_flag_problem(a)
        if why:
            raise PlanRefused(f"plan refused: link flag {a!r} of {output}: {why}")
    elif "module" in a:
        if a["module"] not in plan["modules"]:
            raise PlanRefused(f"plan refused: {output} links unknown module {a['module'][:12]}")
    elif "object" in a:
        if a["object"] not in plan["objects"]:
            raise PlanRefused(f"plan refused: {output} links unknown object {a['object'][:12]}")
    elif "archive" in a:
        if not _SAFE_NAME.match(a["archive"]):
            raise PlanRefused(f"plan refused: archive name {a['archive']!r}")
        for m in a["members"]:
            _check_link_item(m, plan, earlier_ids, output)
    elif "link" in a:
        if a["link"] not in earlier_ids:
            raise PlanRefused(f"plan refused: {output} needs link {a['link']} before it is made")
    elif "file" in a:
        if a["file"] not in plan["files"]:
            raise PlanRefused(f"plan refused: {output} uses unknown file {a['file'][:12]}")
        rest = [t for k, t in enumerate(a["wl"]) if k != a["at"]]
        opt = a["prefix"].rstrip("=") or (a["wl"][a["at"] - 1] if a["at"] > 0 else "")
        if not opt and isinstance(prev, str) and prev.startswith("-Wl,"):
            opt = prev.split(",")[-1]  # libtool: -Wl,-version-script -Wl,FILE
        if opt not in _FILE_OPTIONS:
            raise PlanRefused(f"plan refused: {output} passes a file to linker option {opt!r}")
        why = _linker_tokens_problem([t for t in rest if t != opt])
        if why:
            raise PlanRefused(f"plan refused: {output}: {why}")


def load(bundle: Path) -> dict:
    path = bundle / "plan.json"
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise BakeryError(f"{path} not found", "make a bundle with 'bakery capture RECIPE -o BUNDLE'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanRefused(f"plan refused: {path} is not JSON ({e})") from None
    validate(plan, bundle)
    return plan


def verify_file(bundle: Path, rel: str, sha: str) -> Path:
    """A bundle file, after checking it is inside the bundle and matches its digest."""
    path = _confined(rel, bundle, "file")
    if path.is_symlink() or not path.is_file():
        raise PlanRefused(f"plan refused: {rel} is missing or not a regular file")
    got = _sha(path)
    if got != sha:
        raise PlanRefused(f"plan refused: {rel} was tampered with (sha256 {got[:16]}..., plan says {sha[:16]}...)")
    return path
