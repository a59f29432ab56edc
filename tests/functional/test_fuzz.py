"""Hostile input, generated: mutated real plans, recipes and registry answers are accepted or
refused in one line (PlanRefused, RecipeError, BakeryError), never anything else.

The plan comes from a real capture of a small project with every kind of link item (modules, a
static archive, a shared library with a version script, an executable linking it), so mutations
start from the shapes a registry would serve.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakery import PLAN_MEDIA_TYPE, oci
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery.errors import BakeryError, PlanRefused, RecipeError

FUZZ = settings(max_examples=2000, deadline=None, database=None,  # no .hypothesis/ in the work tree
                suppress_health_check=list(HealthCheck))
FUZZ_SLOW = settings(FUZZ, max_examples=700)  # cases that write and parse a file each

PROJECT = {
    "util.c": "int twice(int x) { return 2 * x; }\n",
    "lib.c": "int twice(int);\nint api(int x) { return twice(x) + 1; }\n",
    "lib.map": "V1 { global: api; local: *; };\n",
    "main.c": "#include <stdio.h>\nint api(int);\nint main(void) { printf(\"%d\\n\", api(20)); return 0; }\n",
    "Makefile": textwrap.dedent("""\
        all: app
        libutil.a: util.c
        \t$(CC) -O2 -fPIC -c util.c -o util.o
        \tar rcs libutil.a util.o
        libv.so: lib.c lib.map libutil.a
        \t$(CC) -O2 -fPIC -shared -Wl,--version-script=lib.map -Wl,-soname,libv.so -o libv.so lib.c libutil.a
        app: main.c libv.so
        \t$(CC) -O2 -o app main.c -L. -lv -Wl,-rpath,'$$ORIGIN' -Wl,-z,relro -lm
        """),
}


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory, toolchain) -> Path:
    from helpers import write_project

    from bakery import capture as capturemod

    tmp = tmp_path_factory.mktemp("fuzz")
    recipe = recipemod.load(write_project(tmp, "fuzz", PROJECT,
                                          "build:\n  system: make\n  options: [all]\noutputs: [app, libv.so]\n"))
    capturemod.capture(recipe, tmp / "bundle", toolchain)
    return tmp / "bundle"


@pytest.fixture(scope="module")
def real_plan(real_bundle) -> dict:
    typed = planmod.load(real_bundle)
    kinds = {type(a) for link in typed.links for a in link.args}
    # the mutations start from every shape
    assert kinds >= {planmod.Flag, planmod.ModuleRef, planmod.Archive, planmod.LinkRef, planmod.FileRef}, kinds
    plan = json.loads((real_bundle / "plan.json").read_text())
    assert typed.to_json() == plan
    return plan


# -- mutating JSON ---------------------------------------------------------------------------------

HOSTILE_TEXT = st.sampled_from([
    "", "\x00", "a\x00b", "-lm\x00", "x\n", "\u202e", "ü", "\ufeff", "/etc/passwd", "../../etc/passwd",
    "/usr/lib/../../etc/x.so", "-mllvm", "-ftime-trace=/tmp/x", "-Wl,-T,/etc/hostname", "-Wl,/etc/hostname",
    "L0", "L99999999", "a" * 64, "x" * 70000, "sha256:" + "0" * 64, "-Wl,--version-script", "$ORIGIN", ".", "/",
])
LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20) | HOSTILE_TEXT
ANY_JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8) | HOSTILE_TEXT, inner, max_size=4), max_leaves=12)


def _paths(node, limit: int = 40) -> list[tuple]:
    """Key paths of every value, shallow ones only: iterative, so the stack depth where a strategy
    runs (it differs between generating and shrinking) cannot change what it draws."""
    out, todo = [], [(node, ())]
    while todo:
        node, path = todo.pop(0)
        out.append(path)
        if len(path) < limit:
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            todo += [(v, path + (k,)) for k, v in items]
    return out


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _deep(depth: int):
    node: object = 1
    for _ in range(depth):
        node = [node]
    return node


@st.composite
def mutated(draw, base):
    """The base document with one to four mutations, each at any of its values."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "text", "deep", "float", "dup", "key"]))
        parent = _get(doc, path[:-1]) if path else None
        old = _get(doc, path)
        if op == "replace":
            new = draw(ANY_JSON)
        elif op == "text":
            new = draw(HOSTILE_TEXT)
        elif op == "deep":
            new = _deep(draw(st.sampled_from([33, 100, 900])))
        elif op == "float":
            exact = isinstance(old, int) and not isinstance(old, bool) and abs(old) < 2 ** 53
            new = float(old) if exact else draw(st.floats())
        elif op == "dup" and isinstance(old, list) and old:
            old.append(copy.deepcopy(old[draw(st.integers(0, len(old) - 1))]))
            continue
        elif op == "key" and isinstance(old, dict):
            old[draw(HOSTILE_TEXT | st.text(max_size=8))] = draw(ANY_JSON)
            continue
        elif op == "delete" and parent is not None:
            del parent[path[-1]]
            continue
        else:
            new = draw(ANY_JSON)
        if parent is None:
            doc = new
        else:
            parent[path[-1]] = new
    return doc


# -- plans -------------------------------------------------------------------------------------------

def _bake_can_run(plan: dict) -> None:
    """What the bake takes for granted of an accepted plan (each was once a crash at bake)."""
    strings = [s for path in _paths(plan) if isinstance(s := _get(plan, path), str)]
    assert not any("\x00" in s for s in strings)                         # subprocess: embedded null byte
    outs = [link["output"] for link in plan["links"]]
    assert len(set(outs)) == len(outs)                                    # one link would overwrite another
    assert not any(a != b and b.startswith(a + "/") for a in outs for b in outs)  # mkdir over a file
    assert all(len(p.encode()) <= 255 for o in outs for p in o.split("/"))  # ENAMETOOLONG
    installs = [name for link in plan["links"] for name in (link["install"], *link.get("also", ()))]
    assert len(set(installs)) == len(installs)                            # one output would overwrite another
    for link in plan["links"]:
        for a in link["args"]:
            if isinstance(a, dict) and "file" in a:
                assert type(a["at"]) is int and 0 <= a["at"] < len(a["wl"])  # wl[at] = path
    assert type(plan["toolchain"]["llvm_major"]) is int


def test_mutated_plans_are_accepted_or_refused(real_plan, real_bundle):
    @FUZZ
    @given(mutated(real_plan))
    def check(plan):
        try:
            planmod.validate(plan, real_bundle)
        except PlanRefused as e:
            assert "\n" not in str(e), str(e)
        else:
            _bake_can_run(plan)
            typed = planmod.Plan.from_json(plan)  # an accepted plan is a model, and its JSON the same plan
            assert planmod.Plan.from_json(typed.to_json()) == typed
            planmod.validate(typed.to_json(), real_bundle)
    check()


def test_mutated_plan_files_are_accepted_or_refused(real_plan, tmp_path):
    """plan.load on bytes: mutated documents, truncated or spliced text, deep nesting."""
    text = json.dumps(real_plan).encode()
    bundle = tmp_path / "bundle"
    bundle.mkdir()

    @settings(FUZZ, max_examples=600)
    @given(st.one_of(
        mutated(real_plan).map(lambda p: json.dumps(p, allow_nan=True).encode()),
        st.integers(0, len(text)).map(lambda n: text[:n]),
        st.tuples(st.integers(0, len(text)), st.binary(max_size=8)).map(lambda t: text[:t[0]] + t[1] + text[t[0]:]),
        st.sampled_from([b"[" * 100000, b'{"a":' * 50000, b"\xff\xfe", b"", b"null", b"1e999999", b"[NaN]"]),
    ))
    def check(data):
        (bundle / "plan.json").write_bytes(data)
        try:
            planmod.load(bundle)
        except BakeryError as e:  # PlanRefused, or "not found" for a missing file
            assert "\n" not in str(e), str(e)
    check()


# -- recipes -----------------------------------------------------------------------------------------

RECIPE = """\
name: fuzz
version: "1.0"
description: a recipe with every section
sources:
  - path: ./src
  - url: https://example.org/x.tar.gz
    sha256: {sha}
    strip_components: 1
    dest: third_party
build:
  system: make
  options: ["all", "CC=cc"]
  env:
    OMP_NUM_THREADS: "2"
  jobs: 2
outputs: [app, lib/libv.so]
preserve:
  flags: ["-O3"]
  libs: ["-lm"]
runtime:
  packages: [libgomp1]
capture:
  opt: O2
  languages: [c]
  levels: [x86_64, x86_64_v3]
entrypoint: [app]
test: [app, "1"]
bench:
  command: [app, "100"]
  repeat: 2
  compare: "^result"
""".format(sha="a" * 64)

YAML_SNIPPETS = st.sampled_from([
    "x: &a [*a]", "x: &a {y: *a}", "<<: *a", "y: *nope", "&a", "*a", "? [a, b]\n: c", "123: x", "yes: 1", "~: 1",
    "x: \"\\0\"", "x: !!binary aGVsbG8=", "x: !!set {a, b}", "x: !!omap [a: 1]", "x: !!timestamp 2001-12-14",
    "x: !!python/object:os.system ls", "x: " + "[" * 3000, "x: " + "{a: " * 2000, "- - - - - - - - - - - - - - - - - - - -",
    "\t", "\x00", "\x85", "\ufeff", "'", '"', "%YAML 1.1", "--- ", "...", "x: .nan", "x: 1.0", "jobs: 1.0",
    "compare: '" + "(" * 3000 + "'", "dest: \"a\\0b\"", "name: \"fuzz\\n\"",
])


def _recipe_dir(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    return tmp_path


def _load_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        recipemod.load(path)
    except RecipeError:
        pass


def test_mutated_recipe_text_is_accepted_or_refused(tmp_path):
    path = _recipe_dir(tmp_path) / "recipe.yaml"
    lines = RECIPE.splitlines()

    @FUZZ_SLOW
    @given(st.lists(st.tuples(st.integers(0, len(lines)), st.integers(0, 8), YAML_SNIPPETS | st.text(max_size=30)),
                    min_size=1, max_size=3))
    def check(edits):
        out = list(lines)
        for at, indent, snippet in edits:
            out.insert(min(at, len(out)), " " * indent + snippet)
        _load_text(path, "\n".join(out) + "\n")
    check()


def test_mutated_recipe_documents_are_accepted_or_refused(tmp_path):
    path = _recipe_dir(tmp_path) / "recipe.yaml"
    base = yaml.safe_load(RECIPE)

    @FUZZ_SLOW
    @given(mutated(base))
    def check(doc):
        if isinstance(doc, float) and math.isnan(doc):
            doc = None
        try:
            text = yaml.safe_dump(doc, allow_unicode=True)
        except (yaml.YAMLError, RecursionError):  # the dumper's limits, not the loader's
            return
        _load_text(path, text)
    check()


def test_alias_bomb_is_refused_fast(tmp_path):
    import time

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    path = _recipe_dir(tmp_path) / "recipe.yaml"
    path.write_text(RECIPE + bomb)
    t0 = time.monotonic()
    with pytest.raises(RecipeError, match="aliases"):
        recipemod.load(path)
    assert time.monotonic() - t0 < 0.5


# -- registry answers for oci.fetch_plan ---------------------------------------------------------------

SUBJECT = "sha256:" + "5" * 64


class _Answer:
    """What the transport gives the client (``Registry._send``): status, headers, body."""

    def __init__(self, status: int, body: bytes = b"", content_type: str = "application/json", headers=None):
        self.status, self.body = status, body
        self.headers = {"Content-Type": content_type, **(headers or {})}

    def response(self) -> oci.Response:
        return oci.Response(self.status, self.headers, io.BytesIO(self.body))


class HostileRegistry(oci.Registry):
    """The real client over a content-addressed store of hostile answers, without a network:
    manifests and blobs are served by the digest of their bytes, as a registry would. Only the
    transport (one HTTP exchange) is answered here: retries, auth and redirects are the client's."""

    def __init__(self, referrers: _Answer, fallback: bytes | None, store: dict[str, bytes]):
        super().__init__("registry.invalid", tls_verify=False)
        self._checked = True  # no reachability check: there is no network
        self.answers, self.fallback, self.store = referrers, fallback, store

    def _send(self, method, url, headers, body):
        return self._answer(url).response()

    def _answer(self, url) -> _Answer:
        kind, ref = url.rsplit("/", 2)[-2:]
        if kind == "referrers":
            return self.answers
        if kind == "manifests" and ref == SUBJECT.replace(":", "-"):
            if self.fallback is None:
                return _Answer(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
            return _Answer(200, self.fallback, headers={"Docker-Content-Digest": oci.sha256(self.fallback)})
        if ref in self.store:
            return _Answer(200, self.store[ref])
        return _Answer(404, b"[1, 2]")  # an error body of the wrong shape, too


def _good_answers() -> tuple[dict, dict]:
    plan = b'{"schemaVersion": 1}'
    layer = {"mediaType": PLAN_MEDIA_TYPE, "digest": oci.sha256(plan), "size": len(plan),
             "annotations": {"org.opencontainers.image.title": "plan.json"}}
    manifest = {"schemaVersion": 2, "mediaType": oci.MANIFEST, "artifactType": PLAN_MEDIA_TYPE,
                "config": {"mediaType": oci.EMPTY, "digest": oci.sha256(b"{}"), "size": 2}, "layers": [layer],
                "subject": {"mediaType": oci.MANIFEST, "digest": SUBJECT, "size": 1},
                "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00+00:00"}}
    return manifest, {"plan": plan}


def test_good_registry_answers_give_the_plan():
    manifest, blobs = _good_answers()
    data = json.dumps(manifest).encode()
    index = {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": [
        {"mediaType": oci.MANIFEST, "digest": oci.sha256(data), "size": len(data), "artifactType": PLAN_MEDIA_TYPE,
         "annotations": manifest["annotations"]}]}
    store = {oci.sha256(data): data, oci.sha256(blobs["plan"]): blobs["plan"]}
    for answer, fallback in ((_Answer(200, json.dumps(index).encode()), None),
                             (_Answer(404, b""), json.dumps(index).encode())):
        plan, digest = oci.fetch_plan(HostileRegistry(answer, fallback, store), "app", SUBJECT)
        assert plan == blobs["plan"] and digest == oci.sha256(plan)


def test_hostile_registry_answers_are_refused_in_one_line():
    manifest, blobs = _good_answers()

    @FUZZ_SLOW
    @given(mutated(manifest), st.data())
    def check(mmanifest, data):
        try:
            mbytes = json.dumps(mmanifest).encode()
        except (ValueError, TypeError):
            return
        if data.draw(st.booleans()):
            mbytes = data.draw(st.sampled_from([b"[]", b"null", b"\xff", b"[" * 10000, mbytes[: len(mbytes) // 2]]))
        desc = {"mediaType": oci.MANIFEST, "digest": oci.sha256(mbytes), "size": len(mbytes),
                "artifactType": PLAN_MEDIA_TYPE, "annotations": manifest["annotations"]}
        index = data.draw(mutated({"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": [desc]}))
        ibytes = json.dumps(index).encode()
        if data.draw(st.booleans()):
            ibytes = data.draw(st.sampled_from([b"[]", b"1", b'{"manifests": {}}', b"[" * 10000, ibytes[:-1]]))
        store = {oci.sha256(mbytes): mbytes, oci.sha256(blobs["plan"]): blobs["plan"]}
        via_api = data.draw(st.booleans())
        reg = HostileRegistry(_Answer(200, ibytes) if via_api else _Answer(404, b"{}"),
                              None if via_api else ibytes, store)
        try:
            plan, digest = oci.fetch_plan(reg, "app", SUBJECT)
        except BakeryError as e:  # PlanRefused among them
            assert "\n" not in str(e), str(e)
        else:
            assert hashlib.sha256(plan).hexdigest() == digest.split(":", 1)[1]
    check()
