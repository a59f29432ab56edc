"""Real third-party code bases, from Debian source packages (recipes/*.yaml).

Each recipe is captured, baked for x86_64_v3 and the baked programs do real
work on generated input, checked against an independent reference: Python's
bz2/zlib modules (the system libbz2/libz of the same upstream versions give
byte-identical streams), json and PyYAML for round trips.

Needs apt deb-src entries and the network (or a warm download cache in
$XDG_CACHE_HOME/bakery/debian); skips when the sources cannot be fetched.
"""

from __future__ import annotations

import bz2
import json
import os
import random
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import recipe as recipemod
from bakery import target as targetmod
from bakery.capture import sources
from bakery.capture.run import build_commands
from bakery.errors import BakeryError

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
# Minutes of capture and bake on 2 cores: run with BAKERY_TEST_HEAVY=1 (bakery bench gives the figures).
HEAVY = {"lammps", "gsl", "expat", "lapack-blas"}
TARGET = "x86_64_v3"

pytestmark = [pytest.mark.slow, pytest.mark.network]


def _fetchable(recipe) -> None:
    """Skip (not fail) when this machine cannot get Debian source packages."""
    for src in recipe.sources:
        if src.kind != "debian":
            continue
        try:
            sources.proc.which("dpkg-source", hint="apt-get install dpkg-dev")
            sources.debian_download(src.location, src.version)
        except BakeryError as e:
            pytest.skip(f"cannot fetch Debian source {src.location}={src.version}: {e}"
                        + (f" ({e.hint})" if e.hint else ""))


@pytest.fixture(scope="module")
def baked_dirs(tmp_path_factory, toolchain):
    made: dict[str, tuple[Path, Path, Path]] = {}

    def get(recipe) -> tuple[Path, Path, Path]:
        """(bundle, directory of the baked outputs, the capture's build tree: outputs are relative to it)"""
        if recipe.name not in made:
            _fetchable(recipe)
            root = tmp_path_factory.mktemp(recipe.name)
            bundle = root / "bundle"
            capturemod.capture(recipe, bundle, toolchain, workdir=root / "work")
            target = targetmod.resolve(TARGET, compiler_version=toolchain.version, family=toolchain.family)
            bakemod.bake(bundle, planmod.load(bundle), toolchain, target, root / "bin")
            outdir = build_commands(recipe, root / "work" / "src", {"CC": "", "CXX": "", "FC": ""}, 1)[1]
            made[recipe.name] = bundle, root / "bin", outdir
        return made[recipe.name]

    return get


def sample(n: int = 1_500_000, seed: int = 1) -> bytes:
    """Compressible but not trivial: words, newlines and random bytes."""
    rnd = random.Random(seed)
    words = [b"alpha ", b"beta ", b"gamma\n", b"bakery ", b"bitcode "]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) if rnd.random() < 0.8 else bytes([rnd.randrange(256)])
    return bytes(out[:n])


def run(argv, *, input: bytes | None = None, cwd: Path | None = None) -> bytes:
    # No LD_LIBRARY_PATH: the baked programs must find their libraries by $ORIGIN.
    cp = subprocess.run([str(a) for a in argv], input=input, cwd=cwd, capture_output=True, timeout=120,
                        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    assert cp.returncode == 0, f"{argv} exited {cp.returncode}: {cp.stderr.decode(errors='replace')[-2000:]}"
    return cp.stdout


def check_bzip2(bindir: Path, tmp: Path) -> None:
    data = sample()
    packed = run([bindir / "bzip2", "-9", "-c"], input=data)
    assert packed == bz2.compress(data, 9)  # byte-identical to the system libbz2 1.0.8
    assert run([bindir / "bzip2", "-d", "-c"], input=packed) == data
    # bzip2recover splits a damaged file into one file per block; all blocks back = the data.
    (tmp / "d.bz2").write_bytes(run([bindir / "bzip2", "-1", "-c"], input=data))
    run([bindir / "bzip2recover", "d.bz2"], cwd=tmp)
    blocks = sorted(tmp.glob("rec*d.bz2"))
    assert len(blocks) > 5
    assert b"".join(bz2.decompress(b.read_bytes()) for b in blocks) == data


def check_zlib(bindir: Path, tmp: Path) -> None:
    data = sample()
    packed = run([bindir / "minigzipsh", "-9"], input=data)
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    assert packed == gz.compress(data) + gz.flush()  # same stream as the system libz 1.2.13
    assert run([bindir / "minigzipsh", "-d"], input=packed) == data
    out = run([bindir / "examplesh", tmp / "t.gz"]).decode()
    assert "large_inflate(): OK" in out and "inflate with dictionary: hello, hello!" in out


def yaml_document() -> dict:
    rnd = random.Random(3)
    recipes = [yaml.safe_load(p.read_text()) for p in RECIPES]
    return {"recipes": recipes,
            "numbers": [rnd.randint(-10**9, 10**9) for _ in range(500)],
            "text": {f"k{i}": "line one\nline: two # not a comment\n" * (i % 4) for i in range(300)},
            "nested": [[{"a": [i, str(i), None, True]}] for i in range(300)]}


def check_libyaml(bindir: Path, tmp: Path) -> None:
    doc = yaml_document()
    src = tmp / "in.yaml"
    src.write_text(yaml.safe_dump(doc, sort_keys=False))
    events = run([bindir / "run-parser-test-suite", src])
    assert events.startswith(b"+STR\n+DOC\n+MAP\n") and events.endswith(b"-DOC\n-STR\n")
    assert yaml.safe_load(run([bindir / "run-emitter-test-suite"], input=events)) == doc
    assert yaml.safe_load(run([bindir / "example-reformatter"], input=src.read_bytes())) == doc


def check_json_c(bindir: Path, tmp: Path) -> None:
    rnd = random.Random(7)

    def value(depth):
        r = rnd.random()
        if depth > 4 or r < 0.3:
            return rnd.choice([rnd.randint(-10**12, 10**12), rnd.random() * 1e6, f"str\u00e9\n{rnd.random()}",
                               True, False, None, 1.5e-300])
        if r < 0.65:
            return [value(depth + 1) for _ in range(rnd.randint(0, 6))]
        return {f"k{i}": value(depth + 1) for i in range(rnd.randint(0, 6))}

    doc = [value(0) for _ in range(1500)]
    src = tmp / "in.json"
    src.write_text(json.dumps(doc))
    lines = run([bindir / "json_parse", "-f", src]).decode().splitlines()
    printed = [l for l in lines if not l.startswith(("maxrss:", "Successfully parsed"))]
    assert len(printed) == 1 and json.loads(printed[0]) == doc


def check_xxhash(bindir: Path, tmp: Path) -> None:
    """Every algorithm, on inputs long enough for the SIMD paths, against the xxhash package."""
    xxh = pytest.importorskip("xxhash")
    data = sample(300_000)
    (tmp / "data").write_bytes(data)
    expect = {"0": xxh.xxh32_hexdigest(data), "1": xxh.xxh64_hexdigest(data),
              "2": xxh.xxh128_hexdigest(data), "3": xxh.xxh3_64_hexdigest(data)}
    for algo, digest in expect.items():
        line = run([bindir / "xxhsum", f"-H{algo}", "data"], cwd=tmp).decode()
        assert digest in line, (algo, line, digest)


def check_zstd(bindir: Path, tmp: Path) -> None:
    """Byte-identical frames to Debian's own zstd 1.5.4 (same version, built by gcc) at levels 3
    and 19, and each one decodes the other's (the assembly decoder and the BMI2 paths run)."""
    data = sample(3_000_000)
    (tmp / "in").write_bytes(data)
    for level in ("-3", "-19"):
        baked = run([bindir / "zstd", "-q", "-T1", level, "-c", tmp / "in"])
        system = run(["zstd", "-q", "-T1", level, "-c", tmp / "in"])
        assert baked == system, (level, len(baked), len(system))
        assert run([bindir / "zstd", "-q", "-d", "-c"], input=system) == data
        assert run(["zstd", "-q", "-d", "-c"], input=baked) == data
    run([bindir / "zstd", "-q", "-t"], input=baked)


def check_serd(bindir: Path, tmp: Path) -> None:
    """A generated Turtle document (prefixes, ';' and ',' lists, integers) gives exactly the expected
    N-Triples, and N-Triples -> Turtle -> N-Triples is stable."""
    ex, xsd_int = "http://example.org/", "http://www.w3.org/2001/XMLSchema#integer"
    ttl, want = ["@prefix ex: <http://example.org/> ."], set()
    for i in range(3000):
        ttl.append(f'ex:s{i} ex:p{i % 7} "lit {i}" ; ex:q ex:o{i * 3} , ex:o{i * 3 + 1} ; ex:n {i} .')
        want |= {f'<{ex}s{i}> <{ex}p{i % 7}> "lit {i}" .', f"<{ex}s{i}> <{ex}q> <{ex}o{i * 3}> .",
                 f"<{ex}s{i}> <{ex}q> <{ex}o{i * 3 + 1}> .", f'<{ex}s{i}> <{ex}n> "{i}"^^<{xsd_int}> .'}
    (tmp / "in.ttl").write_text("\n".join(ttl) + "\n")
    nt = run([bindir / "serdi", "-i", "turtle", "-o", "ntriples", tmp / "in.ttl"]).decode()
    assert set(nt.splitlines()) == want and len(nt.splitlines()) == len(want)
    (tmp / "out.nt").write_text(nt)
    (tmp / "back.ttl").write_bytes(run([bindir / "serdi", "-i", "ntriples", "-o", "turtle", tmp / "out.nt"]))
    assert run([bindir / "serdi", "-i", "turtle", "-o", "ntriples", tmp / "back.ttl"]).decode() == nt


def check_gsl(bindir: Path, tmp: Path) -> None:
    """Random variates from five distributions are byte-identical to Debian's own gsl-bin (same GSL
    version, built by gcc), and gsl-histogram bins them."""
    if not shutil.which("gsl-randist"):
        pytest.skip("Debian's gsl-bin is not installed to compare with")
    for args in (["42", "500", "gaussian", "1.5"], ["7", "500", "gamma", "2.5", "1.3"], ["3", "500", "beta", "2", "5"],
                 ["11", "500", "poisson", "3.7"], ["5", "500", "exponential", "2"]):
        assert run([bindir / "gsl-randist", *args]) == run(["gsl-randist", *args]), args
    hist = run([bindir / "gsl-histogram", "0", "10", "5"], input=run([bindir / "gsl-randist", "0", "20000", "exponential", "2"]))
    assert sum(int(line.split()[2]) for line in hist.decode().splitlines()) > 19000


def check_lammps(bindir: Path, tmp: Path) -> None:
    """The bench deck (LAMMPS's bench/in.lj: Lennard-Jones melt, 32000 atoms), 100 steps: the thermo
    lines of LAMMPS's own serial reference log. A miscompiled force loop drifts or blows up."""
    deck = recipemod.load(REPO / "recipes" / "lammps.yaml").bench.stdin
    out = run([bindir / "lmp", "-log", "none", "-var", "steps", "100"], input=deck.encode(), cwd=tmp).decode()
    thermo = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 6 and f[0].isdigit():
            thermo[int(f[0])] = [float(x) for x in f[1:]]
    reference = {0: [1.44, -6.7733681, 0.0, -4.6134356, -5.0197073],
                 100: [0.7574531, -5.7585055, 0.0, -4.6223613, 0.20726105]}
    for step, want in reference.items():
        assert step in thermo, out[-1500:]
        assert thermo[step] == pytest.approx(want, rel=1e-5, abs=1e-7), (step, thermo[step])


def own_suite(bindir: Path, outdir: Path, recipe, cwd: str, argv: list[str]) -> str:
    """The project's own test suite on the bake: each declared output in the capture's build tree
    is replaced by its baked program, then the project's harness (make check, ctest) runs there,
    with the baked shared libraries first on the search path. Nothing may be rebuilt."""
    for rel in recipe.outputs:
        (outdir / rel).unlink()
        shutil.copy2(bindir / Path(rel).name, outdir / rel)
    cp = subprocess.run(argv, cwd=outdir / cwd, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "LD_LIBRARY_PATH": str(bindir), "LC_ALL": "C"})
    assert cp.returncode == 0, f"{argv} in {cwd}: exit {cp.returncode}\n{cp.stdout[-4000:]}{cp.stderr[-2000:]}"
    for rel in recipe.outputs:
        assert (outdir / rel).read_bytes() == (bindir / Path(rel).name).read_bytes(), f"{rel} was rebuilt"
    return cp.stdout


def check_expat(bindir: Path, tmp: Path, outdir: Path, recipe) -> None:
    """Expat's make check (runtests and runtestspp, 365 checks each) on the baked programs."""
    out = own_suite(bindir, outdir, recipe, "tests", ["make", "check"])
    assert "# PASS:  2" in out and "# FAIL:  0" in out, out[-3000:]
    for log in ("runtests.log", "runtestspp.log"):
        text = (outdir / "tests" / log).read_text()
        assert "Failed: 0" in text and "Checks: 365" in text, text[-1500:]


def check_double_conversion(bindir: Path, tmp: Path, outdir: Path, recipe) -> None:
    """double-conversion's ctest suite (bignum, dtoa, strtod, ... through the baked cctest)."""
    out = own_suite(bindir, outdir, recipe, ".", ["ctest", "--output-on-failure"])
    assert "100% tests passed, 0 tests failed out of 9" in out, out[-3000:]


def check_lapack_blas(bindir: Path, tmp: Path, outdir: Path, recipe) -> None:
    """LAPACK's BLAS tests through its ctest (xblat1/2/3 for s, d, c and z, with its input decks),
    on the baked programs and the baked libblas.so.3."""
    out = own_suite(bindir, outdir, recipe, "_build", ["ctest", "-R", "^BLAS-", "--output-on-failure"])
    assert "100% tests passed, 0 tests failed out of 12" in out, out[-3000:]
    passed = (outdir / "_build" / "BLAS" / "TESTING" / "dblat3.out").read_text()
    assert "DGEMM  PASSED THE COMPUTATIONAL TESTS" in passed and "FAIL" not in passed


# Recipes whose checks run the project's own test suite in the capture's build tree.
SUITES = {"expat": check_expat, "double-conversion": check_double_conversion, "lapack-blas": check_lapack_blas}

CHECKS = {"lammps": check_lammps, "bzip2": check_bzip2, "zlib": check_zlib, "libyaml": check_libyaml, "json-c": check_json_c,
          "xxhash": check_xxhash, "zstd": check_zstd, "serd": check_serd, "gsl": check_gsl}


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.skipif(p.stem in HEAVY and os.environ.get("BAKERY_TEST_HEAVY") != "1",
                                             reason="heavy: set BAKERY_TEST_HEAVY=1"))
    for p in RECIPES], ids=[p.stem for p in RECIPES])
def test_thirdparty_baked_program_works(baked_dirs, tmp_path, path):
    recipe = recipemod.load(path)
    bundle, bindir, outdir = baked_dirs(recipe)
    plan = planmod.load(bundle)
    # Every module of a shared library was compiled -fPIC by these builds (libtool,
    # bzip2's .sho rule, zlib's SFLAGS, CMake); the plan must keep that flag even
    # where a non-PIC compile of the same file gave an identical object.
    for link in plan.links:
        if link.kind == "shared":
            for a in link.args:
                if isinstance(a, planmod.ModuleRef):
                    m = plan.modules[a.sha256]
                    if m.lang == "fortran":  # CMake 3.25 gives LLVMFlang no PIC flag: flang's default, as from source
                        continue
                    assert "-fPIC" in m.flags, f"{link.output}: {m.source} planned without -fPIC"
    for out in recipe.outputs:
        assert (bindir / Path(out).name).is_file(), f"{out} not baked"
    if recipe.test:
        run([bindir / recipe.test[0], *recipe.test[1:]], cwd=tmp_path)
    if recipe.name in SUITES:
        SUITES[recipe.name](bindir, tmp_path, outdir, recipe)
        return
    check = CHECKS.get(recipe.name)
    if check is None:
        pytest.fail(f"no check for recipe {recipe.name}: add one to CHECKS (its test: ran fine)")
    check(bindir, tmp_path)
