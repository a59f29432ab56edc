"""Recipe loading: YAML with line numbers, JSON Schema validation, defaults.

Every problem is reported as ``file:line: key.path: what is expected`` so users
can fix a recipe without reading a traceback or a JSON Schema.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError

from bakery.capture.flags import HOST_CPU_PREFIXES
from bakery.errors import RecipeError
from bakery.plan.trust import compile_flag_problem, link_flag_problem

KeyPath = tuple[str | int, ...]
# (path whose line is reported, path shown to the user, text, hint)
Problem = tuple[KeyPath, KeyPath, str, str | None]

MAX_REPORTED = 5
MAX_BYTES = 1 << 20  # a recipe is a page of YAML; more is a mistake or an attack
MAX_DEPTH = 16       # a real recipe nests 4 deep; deeper YAML only exhausts the stack


@dataclass(frozen=True)
class Source:
    kind: str  # "path" | "url" | "git" | "debian"
    location: str  # absolute resolved path for "path", the package name for "debian", else the URL
    sha256: str | None = None
    commit: str | None = None
    strip_components: int = 0
    dest: str = "."
    version: str | None = None  # the Debian version for "debian"


@dataclass(frozen=True)
class Build:
    system: str
    options: list[str]
    script: list[str]
    subdir: str
    env: dict[str, str]
    jobs: int


@dataclass(frozen=True)
class Bench:
    command: list[str]
    repeat: int
    symbol: str | None
    stdin: str | None = None
    compare: str | None = None
    train: list[str] | None = None        # bench.train: bakery bench --profile's training run
    train_stdin: str | None = None
    inputs: tuple[tuple[str, tuple[str, ...]], ...] = ()   # bench.inputs: (file name, argv making it)
    stdin_file: str | None = None         # one of inputs, as the benchmark's stdin
    train_stdin_file: str | None = None


@dataclass(frozen=True)
class Recipe:
    path: Path
    dir: Path
    digest: str
    name: str
    version: str
    description: str
    sources: list[Source]
    build: Build
    outputs: list[str]
    preserve_flags: list[str]
    preserve_libs: list[str]
    runtime_base: str
    runtime_packages: list[str]
    capture_opt: str
    capture_languages: list[str]
    capture_detect: bool
    capture_strict_c: bool
    capture_simplify: bool
    capture_simplify_min_bytes: int
    capture_levels: list[str]
    entrypoint: list[str]
    test: list[str]
    bench: Bench | None
    data: dict

    @property
    def ref_name(self) -> str:
        return f"{self.name}:{self.version}"


@functools.cache
def schema() -> dict:
    text = resources.files("bakery.recipe").joinpath("schema.json").read_text("utf-8")
    return json.loads(text)


def load(path: str | os.PathLike) -> Recipe:
    file = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{file}: recipe file not found") from None
    except OSError as e:
        raise RecipeError(f"{file}: cannot read recipe: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"{file}: recipe is larger than {MAX_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecipeError(f"{file}:{line}: recipe is not UTF-8 text") from None

    data, lines, scalars = _parse(text, file)
    recipe_dir = Path(path).resolve().parent
    problems = list(_nul_problems(data)) or list(_schema_problems(data, scalars))
    if not problems:
        problems = list(_float_problems(data))
    if not problems:
        problems = list(_semantic_problems(data, recipe_dir))
    if problems:
        _raise(file, problems, lines)

    _fill_defaults(schema(), data)
    return _build_recipe(data, Path(path).resolve(), raw)


# --- YAML -----------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases, and with bounded nesting.

    An alias can refer to its own anchor (a recursive document) or multiply a small text into a
    huge one (nine aliases of nine aliases ...); a recipe has no use for either. Composing is
    recursive: depth is checked before the stack runs out."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a recipe",
                                              self.peek_event().start_mark)
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node, deep=False):
        # PyYAML's own constructors crash on some explicit tags (!!timestamp on a non-date).
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value as {node.tag} "
                                                    f"({type(e).__name__})", node.start_mark) from None


def _parse(text: str, file: str) -> tuple[Any, dict[KeyPath, int], dict[KeyPath, str]]:
    """Return the document plus the 1-based line and raw scalar text of every key path."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise RecipeError(
                    f"{file}:1: recipe is empty",
                    hint="a recipe is a mapping with at least name, version, sources, build and outputs",
                )
            lines: dict[KeyPath, int] = {(): node.start_mark.line + 1}
            scalars: dict[KeyPath, str] = {}
            _index(loader, node, (), lines, scalars, file)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}" if mark else ""
        what = e.problem or e.context or "syntax error"
        if e.context and e.context_mark and e.problem:
            what += f" ({e.context} on line {e.context_mark.line + 1})"
        syntax = isinstance(e, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        hint = "check the indentation and quoting around that line" if syntax else None
        raise RecipeError(f"{file}{where}: invalid YAML: {what}", hint) from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise RecipeError(f"{file}:{line}: invalid YAML: character #x{e.character:04x}: {e.reason}") from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"{file}:{lines[()]}: recipe must be a mapping of keys (name:, version:, ...), "
            f"got {_kind(data)}"
        )
    return data, lines, scalars


def _index(loader, node, path: KeyPath, lines, scalars, file: str) -> None:
    if isinstance(node, yaml.ScalarNode):
        scalars[path] = node.value
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index(loader, item, path + (i,), lines, scalars, file)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            # Non-scalar keys are left to the constructor, which rejects them with a mark.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):  # 123:, yes:, null: are not strings in YAML
                raise RecipeError(f"{file}:{line}: {_fmt(path + (key_node.value,))}: a key must be a string, "
                                  f"got {_kind(key)}", f'quote it: "{key_node.value}":')
            if path + (key,) in lines:
                first = lines[path + (key,)]
                raise RecipeError(f"{file}:{line}: {_fmt(path + (key,))}: duplicate key "
                                  f"(first defined on line {first})")
            lines[path + (key,)] = line
            _index(loader, value_node, path + (key,), lines, scalars, file)


# --- schema ---------------------------------------------------------------


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def _schema_problems(data: dict, scalars: dict[KeyPath, str]) -> Iterator[Problem]:
    for error in _validator().iter_errors(data):
        yield from _explain(error, scalars)


_TYPE_WORDS = {
    "string": "a string", "array": "a list", "object": "a mapping", "integer": "an integer",
    "number": "a number", "boolean": "true or false", "null": "nothing",
}


def _walk(node: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every value with its key path (depth is bounded by the loader)."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def _nul_problems(data: dict) -> Iterator[Problem]:
    """NUL ends a C string: no argv, environment or path can hold one."""
    for path, v in _walk(data):
        if (isinstance(v, str) and "\x00" in v) or (path and "\x00" in str(path[-1])):
            yield path, path, "must not contain a NUL character", None


def _float_problems(data: dict) -> Iterator[Problem]:
    """jsonschema counts 1.0 as an integer; the build would get '1.0' (make -j1.0)."""
    for path, v in _walk(data):
        if isinstance(v, float):
            yield path, path, f"expected an integer, got a number ({v})", None


def _explain(err: ValidationError, scalars: dict[KeyPath, str]) -> Iterator[Problem]:
    """Turn one jsonschema error into plain-words problems."""
    path: KeyPath = tuple(err.absolute_path)
    v, vv, inst, sch = err.validator, err.validator_value, err.instance, err.schema
    if "propertyNames" in err.absolute_schema_path:
        path += (inst,)  # the offending key itself, so its own line is reported

    if v == "required":
        # jsonschema does not say which key is missing beyond its message, so
        # report every missing one; duplicates are merged later.
        for key in vv:
            if key not in inst:
                desc = sch.get("properties", {}).get(key, {}).get("description", "").rstrip(".")
                yield path, path + (key,), "missing required key" + (f" ({desc})" if desc else ""), None
    elif v == "additionalProperties" and vv is False:
        known = list(sch.get("properties", {}))
        for key in inst:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            tip = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
            yield path + (key,), path, f"unknown key '{key}'{tip}", None
    elif v == "oneOf":
        yield from _explain_source(err, path, scalars)
    elif v == "enum":
        choices = [str(c) for c in vv]
        close = difflib.get_close_matches(str(inst), choices, n=1) if isinstance(inst, str) else []
        tip = f" (did you mean '{close[0]}'?)" if close else ""
        yield path, path, f"{_show(inst)} is not one of: {', '.join(choices)}{tip}", None
    elif v == "type":
        wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in ([vv] if isinstance(vv, str) else vv))
        if vv == "array" and sch.get("items", {}).get("type") == "string":
            wanted += " of strings"
        hint = None
        if vv == "string" and inst is not None and path in scalars:
            # YAML turned e.g. 1.0 into a float; the original text is what the user meant.
            lead = f"{path[-1]}: " if isinstance(path[-1], str) else "- "
            hint = f'quote it so YAML keeps it as text: {lead}"{scalars[path]}"'
        yield path, path, f"expected {wanted}, got {_kind(inst)}", hint
    elif v == "pattern":
        rule = sch.get("x-pattern-description", f"must match {vv}")
        yield path, path, f"{_show(inst)} is not valid: {rule}", None
    elif v in ("minItems", "minLength") and vv == 1:
        yield path, path, "must not be empty", None
    elif v == "minItems":
        yield path, path, f"needs at least {vv} items", None
    elif v == "minimum":
        yield path, path, f"must be at least {vv}, got {_show(inst)}", None
    elif v == "maxLength":
        yield path, path, f"is too long (at most {vv} characters)", None
    elif v == "maxItems":
        yield path, path, f"has too many items (at most {vv})", None
    elif v == "maxProperties":
        yield path, path, f"has too many keys (at most {vv})", None
    elif v == "not" and "x-not-description" in sch:
        yield path, path, f"{_show(inst)[:80]} is not valid: {sch['x-not-description']}", None
    elif v == "uniqueItems":
        yield path, path, "must not list the same item twice", None
    else:
        yield path, path, err.message, None


def _explain_source(err: ValidationError, path: KeyPath, scalars) -> Iterator[Problem]:
    kinds = [sub["required"][0] for sub in err.validator_value]
    given = [k for k in kinds if isinstance(err.instance, dict) and k in err.instance]
    if len(given) == 1:
        # The user clearly meant this kind of source: report only that branch's complaints.
        branch = next(i for i, sub in enumerate(err.validator_value) if given[0] in sub["required"])
        for sub_err in err.context:
            if sub_err.relative_schema_path[0] == branch:
                yield from _explain(sub_err, scalars)
        return
    found = f" (found {' and '.join(given)})" if given else ""
    yield path, path, f"each source needs exactly one of {', '.join(kinds)}{found}", None


# --- semantic checks ------------------------------------------------------


def _semantic_problems(data: dict, recipe_dir: Path) -> Iterator[Problem]:
    for i, src in enumerate(data["sources"]):
        if "path" in src and not (recipe_dir / src["path"]).exists():
            at = ("sources", i, "path")
            yield at, at, f"{src['path']!r} does not exist (looked in {recipe_dir})", None
        if "dest" in src:
            yield from _relative(("sources", i, "dest"), src["dest"])

    build = data["build"]
    if build["system"] == "script" and not build.get("script"):
        yield ("build", "script"), ("build", "script"), "required (non-empty) when system is script", None
    elif build["system"] != "script" and build.get("script"):
        yield (("build", "script"), ("build", "script"),
               f"only allowed with system: script (system is {build['system']})",
               "put make targets or configure/cmake arguments in build.options")
    if "subdir" in build:
        yield from _relative(("build", "subdir"), build["subdir"])

    for i, out in enumerate(data["outputs"]):
        yield from _relative(("outputs", i), out)

    yield from _preserve_problems(data.get("preserve", {}))

    bench = data.get("bench")
    if bench:
        names = sorted({PurePosixPath(o).name for o in data["outputs"]})
        if bench["command"][0] not in names:
            cmd_at: tuple = ("bench", "command", 0)
            yield cmd_at, cmd_at, f"{bench['command'][0]!r} is not an output (outputs: {', '.join(names)})", None
        train = bench.get("train")
        if train and train["command"][0] not in names:
            tr_at: tuple = ("bench", "train", "command", 0)
            yield tr_at, tr_at, f"{train['command'][0]!r} is not an output (outputs: {', '.join(names)})", None
        inputs = [i["name"] for i in bench.get("inputs", [])]
        for k, name in enumerate(inputs):
            if name in inputs[:k]:
                dup_at: tuple = ("bench", "inputs", k, "name")
                yield dup_at, dup_at, f"{name!r} is made twice", None
        for where, part in ((("bench",), bench), (("bench", "train"), train or {})):
            if "stdin" in part and "stdin_file" in part:
                both_at: tuple = (*where, "stdin_file")
                yield both_at, both_at, "give stdin or stdin_file, not both", None
            if "stdin_file" in part and part["stdin_file"] not in inputs:
                sf_at: tuple = (*where, "stdin_file")
                yield sf_at, sf_at, (f"{part['stdin_file']!r} is not one of bench.inputs"
                                     f" ({', '.join(inputs) or 'there are none'})"), None
        if train and ((train["command"], train.get("stdin"), train.get("stdin_file"))
                      == (bench["command"], bench.get("stdin"), bench.get("stdin_file"))):
            same_at: tuple = ("bench", "train")
            yield same_at, same_at, "the training run is the benchmark itself: train on other inputs", None
        if "compare" in bench:
            try:
                re.compile(bench["compare"])
            except (re.error, RecursionError, OverflowError) as e:  # deep groups exhaust sre's stack
                re_at: tuple = ("bench", "compare")
                yield re_at, re_at, f"not a regular expression: {e}", None


# Preprocessor flags act when the build compiles: the bitcode the bake starts from is past them.
_PREPROCESSOR = ("-D", "-U", "-I", "-include", "-imacros", "-isystem", "-iquote", "-idirafter")
_CODEGEN_EXAMPLES = "-O3, -ffast-math, -fno-strict-aliasing, -fopenmp"


def _preserve_problems(preserve: dict) -> Iterator[Problem]:
    """What the bake would refuse in the plan (trust.validate), said before the capture runs."""
    for i, flag in enumerate(preserve.get("flags", [])):
        why = compile_flag_problem(flag)
        if why:
            yield ("preserve", "flags", i), ("preserve", "flags"), f"{flag!r}: {why}", _flag_hint(flag)
    for i, lib in enumerate(preserve.get("libs", [])):
        why = link_flag_problem(lib)
        if why:
            yield (("preserve", "libs", i), ("preserve", "libs"), f"{lib!r}: {why}",
                   "preserve.libs is what the bake adds to every link: system libraries (e.g. -lm, -lpthread), "
                   "-L of a system library directory, link flags such as -pthread or -Wl,--as-needed; anything "
                   "else goes in the build's own options (LDFLAGS in build.options or build.env), whose link "
                   "lines the bake replays")


def _flag_hint(flag: str) -> str:
    codegen = f"preserve.flags is for code-generation flags the bake applies, e.g. {_CODEGEN_EXAMPLES}"
    if flag.startswith(_PREPROCESSOR):
        return ("-D, -U, -I and -include are preprocessor flags: they go in the build's own options, where "
                f"they act when the sources are compiled (build.options: [\"CPPFLAGS={flag}\"] for make, "
                "CPPFLAGS or CFLAGS in build.env, or the build.script commands); " + codegen)
    if flag.startswith(HOST_CPU_PREFIXES):
        return "drop it: each bake chooses the CPU (bakery bake --target); " + codegen
    return codegen + "; other flags go in the build's own options (CFLAGS in build.options or build.env)"


def _relative(at: KeyPath, value: str) -> Iterator[Problem]:
    """Paths inside the work tree must not escape it."""
    p = PurePosixPath(value)
    if p.is_absolute():
        yield at, at, f"{value!r} must be a relative path, not absolute", None
    elif ".." in p.parts:
        yield at, at, f"{value!r} must not contain '..'", None


# --- reporting and result -------------------------------------------------


def _raise(file: str, problems: list[Problem], lines: dict[KeyPath, int]):
    rows: dict[tuple[int, str, str], str | None] = {}
    for line_path, shown_path, text, hint in problems:
        rows.setdefault((_line(lines, line_path), _fmt(shown_path), text), hint)
    ordered = sorted(rows)
    msgs = [f"{file}:{line}: {shown + ': ' if shown else ''}{text}"
            for line, shown, text in ordered[:MAX_REPORTED]]
    if len(ordered) > MAX_REPORTED:
        msgs.append(f"... and {len(ordered) - MAX_REPORTED} more problem(s)")
    raise RecipeError("\n".join(msgs), next((rows[r] for r in ordered if rows[r]), None))


def _line(lines: dict[KeyPath, int], path: KeyPath) -> int:
    while path not in lines:  # a missing key is reported at its parent mapping
        path = path[:-1]
    return lines[path]


def _fmt(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value})"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value, default=str)


def _fill_defaults(sch: dict, inst: Any) -> None:
    """Apply the schema's ``default``s in place (the schema is the single source of them)."""
    if isinstance(inst, dict):
        for branch in sch.get("oneOf", ()):
            if all(k in inst for k in branch.get("required", ())):
                _fill_defaults(branch, inst)
        for key, sub in sch.get("properties", {}).items():
            if key not in inst and "default" in sub:
                inst[key] = copy.deepcopy(sub["default"])
            if key in inst:
                _fill_defaults(sub, inst[key])
    elif isinstance(inst, list) and isinstance(sch.get("items"), dict):
        for item in inst:
            _fill_defaults(sch["items"], item)


def _build_recipe(d: dict, path: Path, raw: bytes) -> Recipe:
    sources = []
    for s in d["sources"]:
        kind = next(k for k in ("path", "url", "git", "debian") if k in s)
        location = str((path.parent / s["path"]).resolve()) if kind == "path" else s[kind]
        sources.append(Source(kind, location, s.get("sha256"), s.get("commit"),
                              s.get("strip_components", 0), s["dest"], s.get("version")))
    b = d["build"]
    bench = d.get("bench")
    return Recipe(
        path=path,
        dir=path.parent,
        digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        name=d["name"],
        version=d["version"],
        description=d["description"],
        sources=sources,
        build=Build(b["system"], b["options"], b["script"], b["subdir"], b["env"], b["jobs"]),
        outputs=d["outputs"],
        preserve_flags=d["preserve"]["flags"],
        preserve_libs=d["preserve"]["libs"],
        runtime_base=d["runtime"]["base"],
        runtime_packages=d["runtime"]["packages"],
        capture_opt=d["capture"]["opt"],
        capture_languages=d["capture"]["languages"],
        capture_detect=d["capture"]["detect"],
        capture_strict_c=d["capture"]["strict_c"],
        capture_simplify=d["capture"]["simplify"],
        capture_simplify_min_bytes=d["capture"]["simplify_min_bytes"],
        capture_levels=d["capture"]["levels"],
        entrypoint=d["entrypoint"],
        test=d["test"],
        bench=Bench(bench["command"], bench["repeat"], bench.get("symbol"), bench.get("stdin"),
                    bench.get("compare"), bench.get("train", {}).get("command"),
                    bench.get("train", {}).get("stdin"),
                    tuple((i["name"], tuple(i["command"])) for i in bench.get("inputs", [])),
                    bench.get("stdin_file"), bench.get("train", {}).get("stdin_file")) if bench else None,
        data=d,
    )
