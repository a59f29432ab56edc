"""The bake plan: what a capture saw, and all a bake may do.

A plan arrives from a registry and drives a compiler on a node, so ``load()``
treats it as untrusted: schema first, then every flag through an allow-list,
every path confined to the bundle, every file checked against its digest
before use. Nothing is run by this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path, PurePosixPath

import jsonschema

from bakery import PLAN_MEDIA_TYPE
from bakery.capture.flags import (
    BAKE_FILE_OPTIONS,
    HOST_CPU_PREFIXES,
    LINKER_EQ_OPTIONS,
    LINKER_FILE_OPTIONS,
    LINKER_VALUE_OPTIONS,
    RPATH_OPTIONS,
    SONAME_OPTIONS,
    sha256_file,
)
from bakery.errors import BakeryError, PlanRefused
from bakery.plan.model import Archive, FileRef, Flag, LinkItem, LinkRef, ModuleRef, ObjectRef, Plan, link_item

# -- the untrusted side ----------------------------------------------------------

MAX_PLAN_BYTES = 64 << 20   # far above any real plan; json.loads of more is a denial of service
MAX_DEPTH = 32              # a real plan nests 7 deep; deeper JSON only exhausts the stack
_CTRL = re.compile(r"[\x00-\x1f\x7f]")
# Names used as file names (install names, sonames, archives): one component, ASCII, bounded.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
_OPT = re.compile(r"-O([0-3sz]|fast|g)?")
_DEBUG = {"-g", "-g0", "-g1", "-g2", "-g3", "-ggdb", "-ggdb0", "-ggdb1", "-ggdb2", "-ggdb3", "-gline-tables-only",
          "-gdwarf-4", "-gdwarf-5", "-gno-column-info"}  # no -gsplit-dwarf: it writes .dwo files
_COMMON = {"-pthread", "-fopenmp"} | _DEBUG


def safe_name(s: object) -> bool:
    """A plain file name: fullmatch, so a trailing newline does not pass as ``$`` would let it."""
    return isinstance(s, str) and _SAFE_NAME.fullmatch(s) is not None


# Compile flags, by exact name. Each -f/-m flag here changes code generation only: none takes a
# path, loads code, reads or writes a file, or reaches LLVM's own options (-mllvm, -Xclang).
# Toggles are accepted as -fNAME and -fno-NAME.
_F_TOGGLES = {
    "PIC", "pic", "PIE", "pie", "plt", "common", "strict-aliasing", "strict-overflow", "wrapv", "exceptions",
    "rtti", "unwind-tables", "asynchronous-unwind-tables", "omit-frame-pointer", "fast-math",
    "finite-math-only", "math-errno", "trapping-math", "signed-zeros", "associative-math", "reciprocal-math",
    "unsafe-math-optimizations", "honor-nans", "honor-infinities", "approx-func", "vectorize",
    "slp-vectorize", "unroll-loops", "function-sections", "data-sections", "semantic-interposition",
    "stack-protector", "stack-clash-protection", "openmp", "builtin", "delete-null-pointer-checks",
    "jump-tables", "threadsafe-statics", "merge-all-constants", "optimize-sibling-calls", "inline",
    "inline-functions", "zero-initialized-in-bss", "signed-char", "unsigned-char", "short-enums",
    "strict-enums", "strict-return", "strict-vtable-pointers", "gnu-inline-asm", "ident", "lto",
    "split-lto-unit", "visibility-inlines-hidden", "cf-protection",
}
_F_WORDS = {f"-f{n}" for n in _F_TOGGLES} | {f"-fno-{n}" for n in _F_TOGGLES} | {
    "-fstack-protector-strong", "-fstack-protector-all", "-fopenmp-simd", "-ffreestanding",
}
_VALUES: dict[str, set[str] | re.Pattern[str]] = {  # -fNAME=VALUE / -mNAME=VALUE: every value listed, or a pattern for numbers
    "-fvisibility": {"default", "hidden", "protected", "internal"},
    "-ffp-contract": {"fast", "on", "off", "fast-honor-pragmas"},
    "-ffp-model": {"fast", "precise", "strict"},
    "-fcf-protection": {"full", "branch", "return", "none"},
    "-fdenormal-fp-math": {"ieee", "preserve-sign", "positive-zero", "dynamic"},
    "-ftrivial-auto-var-init": {"uninitialized", "zero", "pattern"},
    "-fzero-call-used-regs": {"skip", "used-gpr-arg", "used-gpr", "used-arg", "used", "all-gpr-arg", "all-gpr",
                              "all-arg", "all"},
    "-ftls-model": {"global-dynamic", "local-dynamic", "initial-exec", "local-exec"},
    "-fopenmp": {"libomp", "libgomp", "libiomp5"},
    "-mcmodel": {"tiny", "small", "kernel", "medium", "large"},
    "-mprefer-vector-width": {"none", "128", "256", "512"},
    "-mfpmath": {"sse", "387"},
    "-mtls-dialect": {"gnu", "gnu2", "trad", "desc"},
    "-mfunction-return": {"keep", "thunk-extern"},
    "-mharden-sls": {"none", "all", "retbr", "blr"},
    "-mstack-protector-guard": {"tls", "global", "sysreg"},
    "-mtls-size": {"12", "24", "32", "48"},
    "-msve-vector-bits": {"128", "256", "512", "1024", "2048", "scalable"},
    "-mbranch-protection": re.compile(r"none|standard|bti|pac-ret(\+(leaf|b-key|bti))*"),
}
_M_WORDS = {"-m64", "-mno-red-zone", "-mred-zone", "-mstackrealign", "-mno-stackrealign", "-momit-leaf-frame-pointer",
            "-mno-omit-leaf-frame-pointer", "-mretpoline", "-mno-retpoline", "-mspeculative-load-hardening",
            "-mno-speculative-load-hardening", "-mimplicit-float", "-mno-implicit-float", "-mvzeroupper",
            "-mno-vzeroupper", "-mindirect-branch-cs-prefix", "-mlong-double-64", "-mlong-double-80",
            "-mlong-double-128", "-msoft-float", "-mno-80387", "-mskip-rax-setup", "-mno-skip-rax-setup",
            "-mno-tls-direct-seg-refs", "-mgeneral-regs-only", "-moutline-atomics", "-mno-outline-atomics",
            "-mstrict-align", "-mno-strict-align", "-mno-unaligned-access", "-mfix-cortex-a53-835769",
            "-mno-fix-cortex-a53-835769"}
# ISA feature flags (-mNAME, -mno-NAME): the bake keeps the ones a build asked for on purpose.
_ISA = set("""
mmx sse sse2 sse3 ssse3 sse4 sse4.1 sse4.2 sse4a avx avx2 fma fma4 f16c bmi bmi2 lzcnt popcnt aes vaes pclmul
vpclmulqdq gfni sha sha512 sm3 sm4 rdrnd rdseed adx movbe xsave xsaveopt xsavec xsaves fxsr cx8 cx16 sahf crc32
prfchw prefetchwt1 prefetchi clflushopt clwb clzero mwaitx pku rtm tbm xop lwp wbnoinvd ptwrite movdiri movdir64b
enqcmd serialize tsxldtrk waitpkg cldemote shstk uintr hreset kl widekl rdpid rdpru invpcid fsgsbase sgx pconfig
cmpccxadd raoint avxifma avxvnni avxvnniint8 avxvnniint16 avxneconvert usermsr amx-tile amx-int8 amx-bf16 amx-fp16
amx-complex avx512f avx512cd avx512dq avx512bw avx512vl avx512ifma avx512vbmi avx512vbmi2 avx512vnni avx512bitalg
avx512vpopcntdq avx512bf16 avx512fp16 avx512vp2intersect avx512er avx512pf avx10.1-256 avx10.1-512 crc
""".split())
_M_WORDS |= {f"-m{n}" for n in _ISA} | {f"-mno-{n}" for n in _ISA}


def compile_flag_problem(flag: str) -> str | None:
    """Why a module flag is refused, or None. An exact allow-list: opt level, codegen flags, debug info."""
    if not isinstance(flag, str):
        return "not a string"
    if _OPT.fullmatch(flag) or flag in _COMMON or flag in _F_WORDS or flag in _M_WORDS:
        return None
    if flag.startswith(HOST_CPU_PREFIXES):
        return "the target is chosen at bake time, not by the plan"
    key, eq, val = flag.partition("=")
    allowed = _VALUES.get(key) if eq else None
    if allowed is not None:
        ok = allowed.fullmatch(val) is not None if isinstance(allowed, re.Pattern) else val in allowed
        return None if ok else f"{val!r} is not an allowed value of {key}"
    if flag.startswith(("-fplugin", "-fpass-plugin", "-fprofile", "-mllvm", "-Xclang", "-ftime-trace",
                        "-fproc-stat-report", "-fsave-optimization-record", "-fcrash-diagnostics")):
        return "reads or writes files, loads code, or reaches LLVM's own options"
    return "not in the allow-list of codegen flags"


# -- link lines: what lld is given -------------------------------------------------

_LINK_WORDS = {"-shared", "-static", "-pie", "-no-pie", "-rdynamic", "-static-libgcc", "-static-libstdc++",
               "-nostartfiles", "-nodefaultlibs", "-nostdlib", "-Qunused-arguments"}
_LINKER_WORDS = {"-O0", "-O1", "-O2", "--as-needed", "--no-as-needed", "--gc-sections", "--no-gc-sections",
                 "--no-undefined", "-Bstatic", "-Bdynamic", "-Bsymbolic", "-Bsymbolic-functions",
                 "--export-dynamic", "-E", "--whole-archive", "--no-whole-archive", "--start-group",
                 "--end-group", "-(", "-)", "--enable-new-dtags", "--disable-new-dtags", "--eh-frame-hdr",
                 "-s", "--strip-all", "-S", "--strip-debug", "--sort-common", "--relax", "--no-relax",
                 "--allow-shlib-undefined", "--no-allow-shlib-undefined", "--copy-dt-needed-entries",
                 "--no-copy-dt-needed-entries", "--warn-common", "--fatal-warnings", "--no-fatal-warnings",
                 "--build-id", "-znodelete", "-znow", "-zrelro", "-zdefs", "-znoexecstack", "--icf=all", "--icf=safe"}
_RPATH_OPTIONS = RPATH_OPTIONS
_SONAME_OPTIONS = SONAME_OPTIONS
_LINKER_VALUE = (LINKER_VALUE_OPTIONS - frozenset(LINKER_FILE_OPTIONS)) | LINKER_EQ_OPTIONS
_LINKER_VALUES = {"--hash-style": {"sysv", "gnu", "both"}, "--build-id": {"none", "fast", "md5", "sha1", "tree", "uuid"},
                  "--icf": {"all", "safe", "none"}, "-O": {"0", "1", "2"},
                  "--compress-debug-sections": {"none", "zlib", "zstd"}}
# Files a link may take from the bundle. No linker scripts (-T, --script): their INPUT, GROUP and
# INCLUDE read host files, and lld echoes a line of any file it cannot parse. Version scripts and
# dynamic lists stay: tried with lld 16 (INCLUDE "/etc/hostname", INCLUDE /etc/hostname and
# INPUT(/etc/hostname), first line or after a version node, in both), their parser reads no other
# file: it stops at "{ expected" or "; expected". Newer lld may expand INCLUDE in its lexer, so
# verify_linker_file also refuses any such file that says INCLUDE.
FILE_OPTIONS = BAKE_FILE_OPTIONS
_Z_WORDS = {"relro", "norelro", "now", "lazy", "noexecstack", "execstack", "defs", "nodelete", "origin",
            "separate-code", "noseparate-code", "muldefs", "text", "notext"}
_FILE = "\x00file"  # stands for a bundle file among a link's linker tokens; NUL is refused in the plan
SYSTEM_LIB_DIRS = ("/usr/lib", "/usr/local/lib", "/lib", "/usr/lib64", "/lib64", "/opt")
_SYSTEM_DIR_PARTS = tuple(PurePosixPath(d).parts for d in SYSTEM_LIB_DIRS)
_LIB_NAME = re.compile(r"-l[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
_LIB_FILE = re.compile(r"-l:lib[A-Za-z0-9_.+-]{1,250}\.(a|so(\.[0-9]+)*)")
_LIB_PATH_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,250}\.(a|o|so(\.[0-9]+)*)")


def system_dir(path: str) -> bool:
    """Whether ``path`` is a system library folder or below one, by whole path components:
    /usr/lib/x86_64-linux-gnu is, /usr/libexec and /optX are not."""
    if not isinstance(path, str) or not path.startswith("/") or _CTRL.search(path) or len(path) > 4096:
        return False
    parts = PurePosixPath(path).parts
    return ".." not in parts and any(parts[:len(d)] == d for d in _SYSTEM_DIR_PARTS)


def _rpath_ok(rpath: str) -> bool:
    return all(_rpath_dir_ok(p) for p in rpath.split(":") if p)


def _rpath_dir_ok(path: str) -> bool:
    if path.startswith(("$ORIGIN", "${ORIGIN}")):
        return True  # relative to the installed binary: cannot reach the build host
    return system_dir(path)


def _linker_tokens_problem(tokens: list[str]) -> str | None:
    """What lld would be given by a run of adjacent -Wl, arguments (and bundle files, as _FILE)."""
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if "plugin" in t or "load-pass" in t:
            return "linker plugins load code"
        if t in _LINKER_WORDS:
            i += 1
            continue
        key, eq, val = t.partition("=")
        if key in FILE_OPTIONS:
            if not eq:
                i += 1
                val = tokens[i] if i < len(tokens) else ""
            if val != _FILE:
                return f"{key} takes a file of the bundle, not {val!r}"
            i += 1
            continue
        if key in _LINKER_VALUE:
            if not eq:
                if i + 1 >= len(tokens):
                    return f"{t} needs a value"
                i += 1
                val = tokens[i]
            if key == "-z" and val not in _Z_WORDS:
                return f"-z {val} is not allowed"
            if key in _LINKER_VALUES and val not in _LINKER_VALUES[key]:
                return f"{key} {val!r} is not allowed"
            if key in _RPATH_OPTIONS and not _rpath_ok(val):
                return f"rpath {val!r} is neither $ORIGIN-relative nor a system directory"
            if key in _SONAME_OPTIONS and not safe_name(val):
                return f"soname {val!r} is not a plain file name"
            i += 1
            continue
        if t.startswith("-z") and t[2:] in _Z_WORDS:
            i += 1
            continue
        if t == _FILE:
            return "a bundle file is given to no version-script or dynamic-list option"
        if t.startswith("/"):  # lld would read it as an input, or a linker script
            return f"path {t!r} is an input file given through -Wl, (only an rpath may be a path)"
        return f"linker option {t!r} is not in the allow-list"
    return None


def link_flag_problem(flag: str) -> str | None:
    """Why a link argument is refused, or None. A -Wl, argument is checked on its own here: a
    split option (libtool's -Wl,-rpath -Wl,DIR) is checked with its value by validate()."""
    if not isinstance(flag, str):
        return "not a string"
    if flag.startswith("@"):
        return "response files are not allowed"
    if flag in _LINK_WORDS or flag in _COMMON or _OPT.fullmatch(flag):
        return None
    if flag.startswith("-l"):
        return None if _LIB_NAME.fullmatch(flag) or _LIB_FILE.fullmatch(flag) else "not a plain library name"
    if flag.startswith("-L"):
        return None if system_dir(flag[2:]) else f"library directory {flag[2:]!r} is outside the system library directories"
    if flag.startswith("-Wl,"):
        return _linker_tokens_problem(flag[4:].split(","))
    if flag.startswith("/"):
        if system_dir(flag) and _LIB_PATH_NAME.fullmatch(PurePosixPath(flag).name):
            return None  # and, at bake time, an ELF file or an ar archive: system_input()
        return f"path {flag!r} is outside the bundle and the system library directories"
    if flag.startswith(("-B", "-specs", "--specs", "-o", "-fuse-ld", "--ld-path", "-Xclang", "-Xlinker",
                        "-fplugin", "--config", "-target", "--target", "--sysroot", "-isysroot", "-mllvm")):
        return "may load code or change the toolchain"
    if flag.startswith(("-f", "-m")):
        return compile_flag_problem(flag)
    if flag.startswith(("-I", "-D", "-U", "-W", "-std=", "-include", "-isystem", "-M", "-x")):
        return "a compile-only flag, not needed to link"
    return "not in the allow-list of link flags"


def system_input(path: str) -> None:
    """At bake time: a library path of the plan must be a regular file (symlinks followed, none
    dangling) that is ELF or an ar archive. Text files there are linker scripts (libc.so), and lld
    would read what they name and echo a line of what it cannot parse."""
    import stat

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise PlanRefused(f"plan refused: link input {path} is not a regular file")
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise PlanRefused(f"plan refused: link input {path}: {e.strerror or e}") from None
    if not (head[:4] == b"\x7fELF" or head == b"!<arch>\n"):
        raise PlanRefused(f"plan refused: link input {path} is neither ELF nor an ar archive (a linker script?)")


def verify_linker_file(bundle: Path, rel: str, sha: str) -> Path:
    """A version script or dynamic list of the bundle, checked as verify_file does and for INCLUDE."""
    path = verify_file(bundle, rel, sha)
    if re.search(rb"\bINCLUDE\b", path.read_bytes()):
        raise PlanRefused(f"plan refused: {rel} says INCLUDE: a version script or dynamic list reads no other file")
    return path


def file_tokens(a: FileRef) -> list[str]:
    """A file item's linker tokens, its file as _FILE (the caller checked ``at``)."""
    return a.tokens(_FILE)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(resources.files("bakery.plan").joinpath("schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _confined(rel: str, bundle: Path, what: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise PlanRefused(f"plan refused: {what} path {rel!r} is outside the bundle")
    full = (bundle / p).resolve()
    if bundle.resolve() not in full.parents:
        raise PlanRefused(f"plan refused: {what} path {rel!r} is outside the bundle")
    return full


def _where(path) -> str:
    return "/".join(str(p) for p in path) or "(top)"


def _shape_problem(plan) -> str | None:
    """Depth, NUL and control characters, floats: what the schema cannot say (or says loosely:
    jsonschema counts 1.0 as an integer). Iterative, so no input can exhaust the stack."""
    stack: list[tuple[object, tuple[str | int, ...], int]] = [(plan, (), 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{_where(path[:MAX_DEPTH])}: nested deeper than {MAX_DEPTH} levels"
        free = path[:1] == ("capture",) or path[:2] in (("recipe", "entrypoint"), ("recipe", "test"))
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str) or _CTRL.search(k):
                    return f"{_where(path)}: key {k!r} has control characters"
                stack.append((v, path + (k,), depth + 1))
        elif isinstance(node, list):
            stack.extend((v, path + (n,), depth + 1) for n, v in enumerate(node))
        elif isinstance(node, str):
            if "\x00" in node or (not free and _CTRL.search(node)):
                return f"{_where(path)}: {node[:60]!r} has a NUL byte or control characters"
        elif isinstance(node, float) and not free:
            return f"{_where(path)}: {node!r} is not an integer"
    return None


def validate(plan: dict, bundle: Path | None = None) -> None:
    """Refuse a plan that could make the bake do anything but compile and link its own files."""
    if not isinstance(plan, dict):
        raise PlanRefused(f"plan refused: the plan is a JSON {type(plan).__name__}, not an object")
    why = _shape_problem(plan)
    if why:
        raise PlanRefused(f"plan refused: {why}")
    try:
        _validator().validate(plan)
    except jsonschema.ValidationError as e:
        msg = e.message if len(e.message) <= 200 else e.message[:200] + "..."
        raise PlanRefused(f"plan refused: {_where(e.absolute_path)}: {msg}") from None
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
    ids: set[str] = set()
    installs: set[str] = set()
    outputs: set[PurePosixPath] = set()
    for link in plan["links"]:
        _check_output(link["output"], outputs)
        for name in (link["install"], *link.get("also", ())):  # also: more names of the same output
            if not safe_name(name):
                raise PlanRefused(f"plan refused: install name {name!r} is not a plain file name")
            if name in installs:
                raise PlanRefused(f"plan refused: install name {name!r} is used twice")
            installs.add(name)
        if link["id"] in ids:
            raise PlanRefused(f"plan refused: link id {link['id']} is used twice")
        _check_link_args(link["args"], plan, ids, link["output"])
        ids.add(link["id"])
    if bundle is not None:
        for table, what in ((plan["modules"], "bitcode"), (plan["objects"], "object"), (plan["files"], "file")):
            for entry in table.values():
                _confined(entry["path"], bundle, what)
                for v in entry.get("variants", []):
                    _confined(v["path"], bundle, what)


def _check_output(rel: str, seen: set[PurePosixPath]) -> None:
    """Outputs are made under the work tree's out/: each a new file, none another's folder."""
    out = PurePosixPath(rel)
    if out.is_absolute() or ".." in out.parts or not out.parts or rel.endswith("/"):
        raise PlanRefused(f"plan refused: link output {rel!r} is outside the bundle")
    if any(len(p.encode()) > 255 for p in out.parts) or len(rel.encode()) > 1024:
        raise PlanRefused(f"plan refused: link output {rel[:80]!r}... is too long")
    if out in seen:
        raise PlanRefused(f"plan refused: two links make {rel!r}")
    for other in seen:
        if other in out.parents or out in other.parents:
            raise PlanRefused(f"plan refused: link outputs {str(other)!r} and {rel!r} are a file and its folder")
    seen.add(out)


def _check_link_args(args: list, plan: dict, earlier_ids: set, output: str) -> None:
    """Adjacent -Wl, arguments and bundle files reach lld as one run of tokens (libtool splits
    -Wl,-rpath -Wl,DIR): each run is checked whole, so an option is checked with its value.
    The schema accepted ``args``: each is one of the link items."""
    run: list[str] = []
    for a in [*map(link_item, args), None]:
        if isinstance(a, Flag) and a.text.startswith("-Wl,"):
            run += a.text[4:].split(",")
            continue
        if isinstance(a, FileRef):
            if a.sha256 not in plan["files"]:
                raise PlanRefused(f"plan refused: {output} uses unknown file {a.sha256[:12]}")
            at, opt = a.at, a.prefix.removesuffix("=")
            if type(at) is not int or not 0 <= at < len(a.wl):
                raise PlanRefused(f"plan refused: {output}: file position {at!r} is not one of its linker tokens")
            if a.prefix and (opt not in FILE_OPTIONS or not a.prefix.endswith("=")):
                raise PlanRefused(f"plan refused: {output} passes a file to linker option {opt!r}")
            run += file_tokens(a)
            continue
        if run:
            why = _linker_tokens_problem(run)
            if why:
                shown = ",".join(t.replace(_FILE, "FILE") for t in run)
                raise PlanRefused(f"plan refused: link flag '-Wl,{shown[:200]}' of {output}: {why}")
            run = []
        if a is not None:
            _check_link_item(a, plan, earlier_ids, output)


def _check_link_item(a: LinkItem, plan: dict, earlier_ids: set, output: str) -> None:
    match a:
        case Flag(text):
            why = link_flag_problem(text)
            if why:
                raise PlanRefused(f"plan refused: link flag {text!r} of {output}: {why}")
        case ModuleRef(sha):
            if sha not in plan["modules"]:
                raise PlanRefused(f"plan refused: {output} links unknown module {sha[:12]}")
        case ObjectRef(sha):
            if sha not in plan["objects"]:
                raise PlanRefused(f"plan refused: {output} links unknown object {sha[:12]}")
        case Archive(name, members):
            if not safe_name(name):
                raise PlanRefused(f"plan refused: archive name {name!r}")
            for m in members:
                _check_link_item(m, plan, earlier_ids, output)
        case LinkRef(id_):
            if id_ not in earlier_ids:
                raise PlanRefused(f"plan refused: {output} needs link {id_} before it is made")


def parse(data: bytes, where: str = "plan.json") -> Plan:
    """Untrusted plan bytes to a validated plan (no bundle: paths are confined by load())."""
    doc = _decode(data, where)
    validate(doc)
    return Plan.from_json(doc)


def _decode(data: bytes, where: str):
    if len(data) > MAX_PLAN_BYTES:
        raise PlanRefused(f"plan refused: {where} is larger than {MAX_PLAN_BYTES >> 20} MiB")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanRefused(f"plan refused: {where} is not JSON ({e})") from None
    except RecursionError:
        raise PlanRefused(f"plan refused: {where} nests too deep") from None


def load(bundle: Path) -> Plan:
    """A bundle's plan, validated with its paths confined to the bundle (files are checked
    against their digests when the bake reads them: verify_file)."""
    path = bundle / "plan.json"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise BakeryError(f"{path} not found", "make a bundle with 'bakery capture RECIPE -o BUNDLE'") from None
    except OSError as e:
        raise PlanRefused(f"plan refused: {path}: {e.strerror or e}") from None
    doc = _decode(data, str(path))
    validate(doc, bundle)
    return Plan.from_json(doc)


def verify_file(bundle: Path, rel: str, sha: str) -> Path:
    """A bundle file, after checking it is inside the bundle and matches its digest."""
    path = _regular(bundle, rel)
    _same_digest(rel, sha256_file(str(path)), sha)
    return path


def read_verified(bundle: Path, rel: str, sha: str) -> tuple[Path, bytes]:
    """A bundle file and its bytes, checked as :func:`verify_file` checks it: the digest is of the
    very bytes returned (a compile given them reads no file that could have changed since)."""
    path = _regular(bundle, rel)
    data = path.read_bytes()
    _same_digest(rel, hashlib.sha256(data).hexdigest(), sha)
    return path, data


def _regular(bundle: Path, rel: str) -> Path:
    path = _confined(rel, bundle, "file")
    if path.is_symlink() or not path.is_file():
        raise PlanRefused(f"plan refused: {rel} is missing or not a regular file")
    return path


def _same_digest(rel: str, got: str, sha: str) -> None:
    if got != sha:
        raise PlanRefused(f"plan refused: {rel} was tampered with (sha256 {got[:16]}..., plan says {sha[:16]}...)")
