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
    text = resources.files("bakery.recipe").joinpath("schema.json").read_text()
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
    assert r.data["capture"] == {"opt": "O2", "languages": ["c", "c++"], "detect": True, "levels": [], "simplify": True, "simplify_min_bytes": 32768,
                                 "strict_c": False}
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
  - debian: zlib
    version: "1:1.2.13.dfsg-1"
    dest: zlib
build:
  system: make
outputs: [bin/pi]
bench:
  command: [pi, "50"]
  symbol: kernel
capture: {{languages: [c]}}
"""
    r = recipe.load(write(tmp_path, text))
    url, git, deb = r.sources[1:]
    assert (url.kind, url.location, url.sha256, url.strip_components, url.dest) == (
        "url", "https://example.org/x.tar.gz", SHA, 1, ".")
    assert (git.kind, git.commit, git.dest, git.strip_components) == ("git", COMMIT, "third_party/y", 0)
    assert r.bench == recipe.Bench(["pi", "50"], 3, "kernel")
    assert deb == recipe.Source("debian", "zlib", dest="zlib", version="1:1.2.13.dfsg-1")
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
     ["build.system: 'mak' is not one of: make, cmake, meson, autotools, script", "did you mean 'make'"]),
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
    ("bench-train-not-an-output", VALID + "bench:\n  command: [pi]\n  train:\n    command: [foo, x]\n", 12,
     ["bench.train.command[0]: 'foo' is not an output"]),
    ("bench-train-is-the-bench", VALID + "bench:\n  command: [pi, '9']\n  train:\n    command: [pi, '9']\n", 11,
     ["bench.train: the training run is the benchmark itself"]),
    ("bench-stdin-file-not-an-input", VALID + "bench:\n  command: [pi]\n  stdin_file: in.txt\n", 11,
     ["bench.stdin_file: 'in.txt' is not one of bench.inputs (there are none)"]),
    ("bench-input-in-a-folder", VALID + "bench:\n  command: [pi]\n  inputs:\n    - name: ../x\n      command: [cat]\n",
     12, ["bench.inputs[0].name: '../x' is not valid", "no folder"]),
    ("bench-input-twice", VALID + "bench:\n  command: [pi]\n  inputs:\n    - {name: a, command: [cat]}\n"
     "    - {name: a, command: [cat]}\n", 13, ["bench.inputs[1].name: 'a' is made twice"]),
    ("bench-stdin-and-file", VALID + "bench:\n  command: [pi]\n  inputs:\n    - {name: a, command: [cat]}\n"
     "  stdin: x\n  stdin_file: a\n", 14, ["bench.stdin_file: give stdin or stdin_file, not both"]),
    ("bench-train-stdin-file-not-an-input", VALID + "bench:\n  command: [pi]\n  train:\n    command: [pi, '1']\n"
     "    stdin_file: t\n", 13, ["bench.train.stdin_file: 't' is not one of bench.inputs"]),
    ("bench-train-is-the-bench-on-one-file", VALID + "bench:\n  command: [pi]\n  inputs:\n    - {name: a, command: [cat]}\n"
     "  stdin_file: a\n  train:\n    command: [pi]\n    stdin_file: a\n", 14,
     ["bench.train: the training run is the benchmark itself"]),
    ("bench-compare-not-a-regex", VALID + "bench:\n  command: [pi]\n  compare: '(unclosed'\n", 11,
     ["bench.compare: not a regular expression: missing ), unterminated subpattern"]),
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
    ("debian-without-version", VALID.replace("path: ./src", "debian: bzip2"), 4,
     ["sources[0].version: missing required key"]),
    ("debian-version-float", VALID.replace("path: ./src", "debian: bzip2\n    version: 1.0"), 5,
     ["sources[0].version: expected a string, got a number (1.0)"]),
    ("debian-bad-version", VALID.replace("path: ./src", 'debian: bzip2\n    version: "latest"'), 5,
     ["sources[0].version: 'latest' is not valid", "Debian version"]),
    ("debian-bad-name", VALID.replace("path: ./src", 'debian: BZip2\n    version: "1.0.8-5"'), 4,
     ["sources[0].debian: 'BZip2' is not valid", "source package name"]),
    ("debian-unknown-key", VALID.replace("path: ./src", f'debian: bzip2\n    version: "1.0.8-5"\n    sha256: {SHA}'), 6,
     ["sources[0]: unknown key 'sha256'"]),
    ("debian-and-git", VALID.replace("path: ./src", 'debian: bzip2\n    git: https://x/y.git'), 4,
     ["sources[0]:", "exactly one of path, url, git, debian", "git and debian"]),
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


def test_float_debian_version_hint_says_quote(tmp_path):
    with pytest.raises(RecipeError) as exc:
        recipe.load(write(tmp_path, VALID.replace("path: ./src", "debian: bzip2\n    version: 1.0")))
    assert exc.value.hint == 'quote it so YAML keeps it as text: version: "1.0"'


# --- preserve: checked with the bake's own allow-lists when the recipe loads ----------

PRESERVE_D = VALID + 'preserve:\n  flags: ["-O2", "-D_FILE_OFFSET_BITS=64"]\n'


def test_preprocessor_flag_in_preserve_is_refused_at_load(tmp_path):
    p = write(tmp_path, PRESERVE_D)
    with pytest.raises(RecipeError) as exc:
        recipe.load(p)
    assert str(exc.value) == f"{p}:10: preserve.flags: '-D_FILE_OFFSET_BITS=64': not in the allow-list of codegen flags"
    hint = exc.value.hint
    assert "preprocessor" in hint and "build's own options" in hint and "CPPFLAGS=-D_FILE_OFFSET_BITS=64" in hint
    assert "preserve.flags is for code-generation flags" in hint


def test_refused_preserved_flag_is_reported_on_its_own_line(tmp_path):
    p = write(tmp_path, VALID + "preserve:\n  flags:\n    - -O2\n    - -D_FILE_OFFSET_BITS=64\n")
    with pytest.raises(RecipeError, match=r":12: preserve.flags: '-D_FILE_OFFSET_BITS=64': "):
        recipe.load(p)


def test_the_hint_names_flags_the_bake_allows(tmp_path):
    from bakery.plan.trust import compile_flag_problem

    for flag in ("-D_FILE_OFFSET_BITS=64", "-Wall", "-march=native"):
        with pytest.raises(RecipeError) as exc:
            recipe.load(write(tmp_path, VALID + f'preserve:\n  flags: ["{flag}"]\n'))
        examples = exc.value.hint.split("e.g. ")[1].split("; ")[0].split(", ")
        assert "-ffast-math" in examples and "-fno-strict-aliasing" in examples
        assert all(compile_flag_problem(f) is None for f in examples), examples


def test_host_cpu_flag_in_preserve_says_the_bake_chooses_the_cpu(tmp_path):
    with pytest.raises(RecipeError) as exc:
        recipe.load(write(tmp_path, VALID + 'preserve:\n  flags: ["-march=native"]\n'))
    assert "preserve.flags: '-march=native': the target is chosen at bake time" in str(exc.value)
    assert "bakery bake --target" in exc.value.hint


def test_codegen_flags_and_system_libs_in_preserve_load(tmp_path):
    r = recipe.load(write(tmp_path, VALID + 'preserve:\n  flags: ["-O2", "-ffast-math", "-fno-strict-aliasing"]\n'
                          '  libs: ["-lm", "-lpthread", "-L/usr/lib/x86_64-linux-gnu", "-Wl,--as-needed"]\n'))
    assert r.preserve_flags == ["-O2", "-ffast-math", "-fno-strict-aliasing"]
    assert r.preserve_libs == ["-lm", "-lpthread", "-L/usr/lib/x86_64-linux-gnu", "-Wl,--as-needed"]


def test_refused_preserved_lib_is_refused_at_load(tmp_path):
    p = write(tmp_path, VALID + 'preserve:\n  flags: ["-O2"]\n  libs:\n    - -lm\n    - -L/home/me/lib\n')
    with pytest.raises(RecipeError) as exc:
        recipe.load(p)
    assert str(exc.value) == (f"{p}:13: preserve.libs: '-L/home/me/lib': library directory '/home/me/lib' "
                              "is outside the system library directories")
    assert exc.value.hint.startswith("preserve.libs is what the bake adds to every link")


# --- the debian source kind, against stand-ins for apt-get and dpkg-source -----------

FAKE_APT = """\
import os, sys
# apt-get source --download-only -q NAME=VERSION
name, version = sys.argv[-1].split("=", 1)
mode = os.environ.get("FAKE_APT", "ok")
with open(os.environ["FAKE_APT_LOG"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if mode == "nosrc":
    sys.exit("E: You must put some 'deb-src' URIs in your sources.list")
if mode == "noversion":
    sys.exit(f"E: Can not find version '{version}' of package '{name}'\\nE: Unable to find a source package for {name}")
upstream = version.split(":", 1)[-1]
open(f"{name}_{upstream}.dsc", "w").write("Format: 3.0 (quilt)\\n")
open(f"{name}_{upstream.rsplit('-', 1)[0]}.orig.tar.xz", "w").write("tarball")
"""

FAKE_DPKG_SOURCE = """\
import os, sys
# dpkg-source -x DSC DIR: a tree with Debian's patch applied
assert sys.argv[1] == "-x" and os.path.exists(sys.argv[2]), sys.argv
os.makedirs(os.path.join(sys.argv[3], "debian", "patches"))
open(os.path.join(sys.argv[3], "hello.c"), "w").write("int main(void) { return 0; } /* patched */\\n")
"""


@pytest.fixture
def fake_debian(tmp_path, monkeypatch):
    import sys
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, body in (("apt-get", FAKE_APT), ("dpkg-source", FAKE_DPKG_SOURCE)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "apt.log"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_APT_LOG", str(log))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return bin_dir, log


def test_debian_source_is_fetched_unpacked_and_cached(tmp_path, fake_debian):
    from bakery.capture import sources
    _, log = fake_debian
    src = recipe.Source("debian", "hello", dest="app", version="1:2.10-3")
    for n in (1, 2):
        root = tmp_path / f"root{n}"
        root.mkdir()
        sources.fetch_all([src], root)
        assert "patched" in (root / "app" / "hello.c").read_text()
        assert (root / "app" / "debian" / "patches").is_dir()
    # one download, kept under $XDG_CACHE_HOME/bakery/debian for the second capture
    assert log.read_text().splitlines() == ["source --download-only -q hello=1:2.10-3"]
    cached = tmp_path / "cache" / "bakery" / "debian"
    assert [p.name for p in cached.iterdir()] == ["hello_1%3a2.10-3"]
    assert (cached / "hello_1%3a2.10-3" / "hello_2.10-3.dsc").is_file()


def test_debian_source_without_deb_src_says_how_to_add_it(tmp_path, fake_debian, monkeypatch):
    from bakery.capture import sources
    from bakery.errors import BakeryError
    monkeypatch.setenv("FAKE_APT", "nosrc")
    with pytest.raises(BakeryError) as exc:
        sources.fetch_all([recipe.Source("debian", "bzip2", version="1.0.8-5")], tmp_path)
    assert "apt-get source bzip2=1.0.8-5 failed" in str(exc.value)
    assert "deb-src" in exc.value.hint and "/etc/apt/sources.list.d/" in exc.value.hint
    assert "apt-get update" in exc.value.hint
    assert not any((tmp_path / "cache" / "bakery" / "debian").iterdir())  # no half download left


def test_debian_source_unknown_version_points_at_showsrc(tmp_path, fake_debian, monkeypatch):
    from bakery.capture import sources
    from bakery.errors import BakeryError
    monkeypatch.setenv("FAKE_APT", "noversion")
    with pytest.raises(BakeryError) as exc:
        sources.fetch_all([recipe.Source("debian", "bzip2", version="9.9-1")], tmp_path)
    assert "Can not find version '9.9-1'" in str(exc.value)
    assert "apt-cache showsrc bzip2" in exc.value.hint and "apt-get update" in exc.value.hint


def test_debian_source_needs_dpkg_dev(tmp_path, fake_debian):
    from bakery.capture import sources
    from bakery.errors import BakeryError
    bin_dir, log = fake_debian
    (bin_dir / "dpkg-source").unlink()
    with pytest.raises(BakeryError) as exc:
        sources.fetch_all([recipe.Source("debian", "bzip2", version="1.0.8-5")], tmp_path)
    assert str(exc.value) == "dpkg-source not found on PATH"
    assert exc.value.hint == "install it with: apt-get install dpkg-dev"
    assert not log.exists()  # checked before anything is downloaded


def test_inputs_digest_follows_the_local_source_tree_not_build_debris(tmp_path):
    import os

    from bakery.capture import sources

    p = write(tmp_path, VALID)
    (tmp_path / "src" / "pi.c").write_text("int main(void){return 0;}\n")
    (tmp_path / "src" / "run.sh").write_text("#!/bin/sh\n")
    first = sources.inputs_digest(recipe.load(p))
    assert first.startswith("sha256:") and first != recipe.load(p).digest
    (tmp_path / "src" / "pi.o").write_bytes(b"\x7fELF")  # build debris, as copying the tree skips it
    (tmp_path / "src" / ".git").mkdir()
    assert sources.inputs_digest(recipe.load(p)) == first
    os.chmod(tmp_path / "src" / "run.sh", 0o755)
    second = sources.inputs_digest(recipe.load(p))
    assert second != first
    (tmp_path / "src" / "pi.c").write_text("int main(void){return 1;}\n")
    assert sources.inputs_digest(recipe.load(p)) not in (first, second)


# --- hostile recipes: refused in one line, quickly, never a traceback ----------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcde", "bcdef", strict=True))

HOSTILE = [
    ("recursive-alias", VALID + "x: &a [*a]\n", 9, ["aliases (*name) are not allowed"]),
    ("recursive-mapping-alias", VALID + "x: &a {y: *a}\n", 9, ["aliases (*name) are not allowed"]),
    ("alias-bomb", VALID + BOMB, 10, ["aliases (*name) are not allowed"]),
    ("merge-key-alias", VALID.replace("build:", "base: &b {system: make}\nbuild:\n  <<: *b"), 7,
     ["aliases (*name) are not allowed"]),
    ("deep-flow", VALID + "x: " + "[" * 5000 + "]" * 5000 + "\n", 9, ["nested deeper than 16 levels"]),
    ("deep-block", VALID + "x:\n  " + "- " * 40 + "1\n", 10,
     ["nested deeper than 16 levels"]),
    ("env-int-key", VALID.replace("outputs:", "  env:\n    123: x\noutputs:"), 9, ["a key must be a string", "123"]),
    ("env-bool-key", VALID.replace("outputs:", "  env:\n    yes: x\noutputs:"), 9, ["build.env.yes: a key must be a string"]),
    ("top-null-key", VALID + "~: 1\n", 9, ["a key must be a string"]),
    ("nul-in-dest", VALID.replace("path: ./src", 'path: ./src\n    dest: "a\\0b"'), 5,
     ["sources[0].dest: must not contain a NUL"]),
    ("nul-in-output", VALID.replace("[pi]", '["pi\\0"]'), 8, ["outputs[0]: must not contain a NUL"]),
    ("nul-in-script", VALID.replace('options: ["pi"]', 'script: ["make\\0"]').replace("make\n", "script\n"), 7,
     ["build.script[0]: must not contain a NUL"]),
    ("nul-in-env-value", VALID.replace("outputs:", '  env:\n    A: "x\\0"\noutputs:'), 9,
     ["build.env.A: must not contain a NUL"]),
    ("newline-in-name", VALID.replace("name: pi", 'name: "pi\\n"'), 1, ["name:", "newline"]),
    ("newline-in-version", VALID.replace('"1.0"', '"1.0\\n"'), 2, ["version:", "newline"]),
    ("newline-in-output", VALID.replace("[pi]", '["pi\\n"]'), 8, ["outputs[0]:", "newline"]),
    ("newline-in-sha256", VALID.replace("path: ./src", f'url: https://x/y.tgz\n    sha256: "{SHA}\\n"'), 5,
     ["sources[0].sha256:", "newline"]),
    ("float-jobs", VALID.replace("outputs:", "  jobs: 2.0\noutputs:"), 8, ["build.jobs: expected an integer"]),
    ("float-repeat", VALID + "bench:\n  command: [pi]\n  repeat: 3.0\n", 11, ["bench.repeat: expected an integer"]),
    ("too-many-outputs", VALID.replace("[pi]", "[" + ", ".join(["pi"] * 2000) + "]"), 8,
     ["outputs: has too many items"]),
    ("too-long-output", VALID.replace("[pi]", "[" + "p" * 5000 + "]"), 8, ["outputs[0]: is too long"]),
    ("too-many-env", VALID.replace("outputs:", "  env: {" + ", ".join(f"V{i}: x" for i in range(300))
                                   + "}\noutputs:"), 8, ["build.env: has too many keys"]),
]


@pytest.mark.parametrize("text,line,fragments", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_recipe_is_refused(tmp_path, text, line, fragments):
    import time
    p = write(tmp_path, text, name="bad.yaml")
    t0 = time.monotonic()
    with pytest.raises(RecipeError) as exc:
        recipe.load(p)
    assert time.monotonic() - t0 < 1.0, "a hostile recipe must be refused quickly"
    msg = str(exc.value)
    assert msg.startswith(f"{p}:{line}: ") and len(msg.splitlines()) == 1, msg
    assert all(f in msg for f in fragments), msg


def test_oversized_recipe_is_refused_unread(tmp_path):
    p = write(tmp_path, VALID + "#" * (recipe.MAX_BYTES + 1) + "\n")
    with pytest.raises(RecipeError, match="larger than 1 MiB"):
        recipe.load(p)


def test_anchor_without_alias_is_fine(tmp_path):
    assert recipe.load(write(tmp_path, VALID.replace("system: make", "system: &s make"))).build.system == "make"
