import json
import textwrap
from importlib import resources

import pytest
from jsonschema import Draft202012Validator

from bakery import recipe
from bakery.errors import RecipeError

VALID = """\
name: pi
version: "1.0"
sources:
  - path: ./src
build:
  system: make
  options: ["pi"]
outputs: [pi]
"""

SHA = "a" * 64
COMMIT = "b" * 40


def write(tmp_path, text, name="recipe.yaml"):
    (tmp_path / "src").mkdir(exist_ok=True)
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_schema_is_valid_draft_2020_12():
    text = resources.files("bakery").joinpath("schemas/recipe.schema.json").read_text()
    Draft202012Validator.check_schema(json.loads(text))


def test_valid_recipe_gets_defaults(tmp_path):
    r = recipe.load(write(tmp_path, VALID))
    assert r.path == (tmp_path / "recipe.yaml").resolve() and r.dir == r.path.parent
    assert r.digest.startswith("sha256:") and len(r.digest) == 7 + 64
    assert (r.name, r.version, r.description, r.ref_name) == ("pi", "1.0", "", "pi:1.0")
    assert r.sources == [recipe.Source("path", str((tmp_path / "src").resolve()))]
    assert r.build == recipe.Build("make", ["pi"], [], ".", {}, 0)
    assert r.outputs == ["pi"]
    assert (r.preserve_flags, r.preserve_libs) == ([], [])
    assert (r.runtime_base, r.runtime_packages) == ("debian:bookworm-slim", [])
    assert (r.capture_opt, r.capture_languages) == ("O2", ["c", "c++"])
    assert (r.entrypoint, r.test, r.bench) == ([], [], None)
    assert r.data["capture"] == {"opt": "O2", "languages": ["c", "c++"]}
    assert r.data["sources"][0]["dest"] == "."


def test_full_recipe(tmp_path):
    text = f"""\
name: pi
version: "1.0"
sources:
  - path: ./src
  - url: https://example.org/x.tar.gz
    sha256: {SHA}
  - git: https://example.org/y.git
    commit: {COMMIT}
    dest: third_party/y
build:
  system: make
outputs: [bin/pi]
bench:
  command: [pi, "50"]
  symbol: kernel
capture: {{languages: [c]}}
"""
    r = recipe.load(write(tmp_path, text))
    url, git = r.sources[1:]
    assert (url.kind, url.location, url.sha256, url.strip_components, url.dest) == (
        "url", "https://example.org/x.tar.gz", SHA, 1, ".")
    assert (git.kind, git.commit, git.dest, git.strip_components) == ("git", COMMIT, "third_party/y", 0)
    assert r.bench == recipe.Bench(["pi", "50"], 3, "kernel")
    assert (r.capture_opt, r.capture_languages) == ("O2", ["c"])


# (id, recipe text, line, fragments that must all appear on that line of the message)
CASES = [
    ("unknown-top-key", VALID.replace("outputs:", "ouputs:"), 8, ["unknown key 'ouputs'", "did you mean 'outputs'"]),
    ("missing-name", VALID.replace("name: pi\n", ""), 1, ["name: missing required key"]),
    ("missing-outputs", VALID.replace("outputs: [pi]\n", ""), 1, ["outputs: missing required key"]),
    ("empty-sources", VALID.replace("  - path: ./src\n", "").replace("sources:", "sources: []"), 3,
     ["sources: must not be empty"]),
    ("path-and-url", VALID.replace("  - path: ./src\n", "  - path: ./src\n    url: https://x/y.tgz\n"), 4,
     ["sources[0]:", "exactly one of path, url, git", "path and url"]),
    ("url-without-sha256", VALID.replace("path: ./src", "url: https://x/y.tgz"), 4,
     ["sources[0].sha256: missing required key"]),
    ("bad-sha256", VALID.replace("path: ./src", "url: https://x/y.tgz\n    sha256: abc123"), 5,
     ["sources[0].sha256:", "'abc123'", "64 lowercase hex"]),
    ("git-without-commit", VALID.replace("path: ./src", "git: https://x/y.git"), 4,
     ["sources[0].commit: missing required key"]),
    ("source-not-mapping", VALID.replace("  - path: ./src", "  - ./src"), 4,
     ["sources[0]:", "exactly one of path, url, git"]),
    ("version-float", VALID.replace('"1.0"', "1.0"), 2, ["version: expected a string, got a number (1.0)"]),
    ("bad-name", VALID.replace("name: pi", "name: My App"), 1, ["name: 'My App' is not valid", "lowercase"]),
    ("bad-version", VALID.replace('"1.0"', '"-1 beta"'), 2, ["version: '-1 beta' is not valid", "OCI tag"]),
    ("unknown-system", VALID.replace("system: make", "system: mak"), 6,
     ["build.system: 'mak' is not one of: make, cmake, autotools, script", "did you mean 'make'"]),
    ("missing-system", VALID.replace("  system: make\n", ""), 5, ["build.system: missing required key"]),
    ("script-without-script", VALID.replace("system: make", "system: script"), 5,
     ["build.script: required", "system is script"]),
    ("script-for-make", VALID.replace('options: ["pi"]', "script: [make pi]"), 7,
     ["build.script: only allowed with system: script"]),
    ("options-not-list", VALID.replace('["pi"]', "pi"), 7, ["build.options: expected a list of strings, got a string"]),
    ("option-not-string", VALID.replace('["pi"]', '["pi", 3]'), 7, ["build.options[1]: expected a string"]),
    ("negative-jobs", VALID.replace("outputs:", "  jobs: -1\noutputs:"), 8, ["build.jobs: must be at least 0, got -1"]),
    ("env-value-number", VALID.replace("outputs:", "  env:\n    OMP_NUM_THREADS: 4\noutputs:"), 9,
     ["build.env.OMP_NUM_THREADS: expected a string"]),
    ("env-bad-name", VALID.replace("outputs:", "  env:\n    1BAD: x\noutputs:"), 9,
     ["build.env.1BAD: '1BAD' is not valid", "environment variable"]),
    ("build-unknown-key", VALID.replace("outputs:", "  sbudir: x\noutputs:"), 8,
     ["build: unknown key 'sbudir'", "did you mean 'subdir'"]),
    ("dotdot-output", VALID.replace("[pi]", "[pi, ../pi]"), 8, ["outputs[1]: '../pi' must not contain '..'"]),
    ("absolute-output", VALID.replace("outputs: [pi]", "outputs:\n  - pi\n  - /usr/bin/pi"), 10,
     ["outputs[1]: '/usr/bin/pi' must be a relative path"]),
    ("empty-outputs", VALID.replace("[pi]", "[]"), 8, ["outputs: must not be empty"]),
    ("preserve-flags-not-list", VALID + "preserve:\n  flags: -O3\n", 10,
     ["preserve.flags: expected a list of strings"]),
    ("runtime-unknown-key", VALID + "runtime:\n  base: debian:bookworm\n  pakages: [libgomp1]\n", 11,
     ["runtime: unknown key 'pakages'", "did you mean 'packages'"]),
    ("bench-repeat-zero", VALID + "bench:\n  command: [pi]\n  repeat: 0\n", 11, ["bench.repeat: must be at least 1, got 0"]),
    ("bench-missing-command", VALID + "bench:\n  repeat: 2\n", 9, ["bench.command: missing required key"]),
    ("bench-not-an-output", VALID + "bench:\n  command: [foo]\n", 10, ["bench.command[0]: 'foo' is not an output"]),
    ("capture-opt-invalid", VALID + "capture:\n  opt: O4\n", 10, ["capture.opt: 'O4' is not one of: O1, O2, O3, Os, Oz"]),
    ("capture-language-invalid", VALID + "capture:\n  languages: [c, rust]\n", 10,
     ["capture.languages[1]: 'rust' is not one of: c, c++, fortran"]),
    ("duplicate-key", VALID + "name: pi2\n", 9, ["name: duplicate key (first defined on line 1)"]),
    ("duplicate-nested-key", VALID.replace("outputs:", "  system: cmake\noutputs:"), 8,
     ["build.system: duplicate key (first defined on line 6)"]),
    ("bad-indentation", VALID.replace('  options: ["pi"]', '   options: ["pi"]'), 7, ["invalid YAML"]),
    ("unclosed-flow", VALID.replace("[pi]", "[pi"), 9, ["invalid YAML"]),
    ("control-character", VALID.replace('"1.0"', '"1\x01"'), 2, ["invalid YAML", "#x0001"]),
    ("unknown-tag", VALID + "x: !!python/object:os.system ls\n", 9, ["invalid YAML", "python/object"]),
    ("empty-file", "", 1, ["recipe is empty"]),
    ("only-comments", "# nothing yet\n", 1, ["recipe is empty"]),
    ("top-level-list", "- name: pi\n- version: 1\n", 1, ["must be a mapping", "got a list"]),
    ("top-level-scalar", "pi\n", 1, ["must be a mapping", "got a string"]),
    ("path-missing", VALID.replace("./src", "./nope"), 4, ["sources[0].path: './nope' does not exist"]),
    ("dest-escapes", VALID.replace("path: ./src", "path: ./src\n    dest: ../up"), 5,
     ["sources[0].dest: '../up' must not contain '..'"]),
    ("strip-components-negative",
     VALID.replace("path: ./src", f"url: https://x/y.tgz\n    sha256: {SHA}\n    strip_components: -2"), 6,
     ["sources[0].strip_components: must be at least 0"]),
]


@pytest.mark.parametrize("text,line,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_recipe(tmp_path, text, line, fragments):
    p = write(tmp_path, text, name="bad.yaml")
    with pytest.raises(RecipeError) as exc:
        recipe.load(p)
    msg = str(exc.value)
    assert "Traceback" not in msg and "Failed validating" not in msg and "On instance" not in msg
    prefix = f"{p}:{line}: "
    lines = [l for l in msg.splitlines() if l.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{msg}"
    assert any(all(f in l for f in fragments) for l in lines), msg


def test_float_version_hint_says_quote(tmp_path):
    with pytest.raises(RecipeError) as exc:
        recipe.load(write(tmp_path, VALID.replace('"1.0"', "1.0")))
    assert exc.value.hint == 'quote it so YAML keeps it as text: version: "1.0"'


def test_missing_file_is_named(tmp_path):
    with pytest.raises(RecipeError, match="nope.yaml: recipe file not found"):
        recipe.load(tmp_path / "nope.yaml")


def test_errors_sorted_by_line_and_capped(tmp_path):
    text = "".join(f"bogus{i}: 1\n" for i in range(8)) + VALID
    with pytest.raises(RecipeError) as exc:
        recipe.load(write(tmp_path, text))
    msg_lines = str(exc.value).splitlines()
    assert [l.split(":")[1] for l in msg_lines[:5]] == ["1", "2", "3", "4", "5"]
    assert msg_lines[-1] == "... and 3 more problem(s)"
