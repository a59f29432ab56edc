"""What tests share that is not a fixture: the repository's paths, small projects, verify scripts,
disassembly. Fixtures are in conftest.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "recipe.yaml").exists())


def write_project(tmp_path: Path, name: str, files: dict[str, str], rest: str, version: str = "1.0") -> Path:
    """A small app written by a test: src/ with the files (dedented) and recipe.yaml naming it,
    whose build/outputs/... keys are ``rest``. Returns the recipe file."""
    import textwrap

    src = tmp_path / "src"
    src.mkdir()
    for rel, text in files.items():
        (src / rel).write_text(textwrap.dedent(text))
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f'name: {name}\nversion: "{version}"\nsources:\n  - path: ./src\n' + textwrap.dedent(rest))
    return recipe_file


def run_verify(name: str, bindir: Path) -> str:
    cp = subprocess.run([str(EXAMPLES / name / "verify"), str(bindir)], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, f"verify {name} failed on {bindir}:\n{cp.stdout}\n{cp.stderr}"
    return cp.stdout


def disassembly(path: Path, symbol: str | None = None) -> str:
    argv = ["objdump", "-d", "--no-show-raw-insn", str(path)]
    if symbol:
        argv.insert(2, f"--disassemble={symbol}")
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout




K8S_VERSION = "1.30"


def validate_k8s(text: str) -> list[dict]:
    """Rendered manifests, each checked against the Kubernetes schemas in strict mode."""
    import pytest

    from bakery.scale import k8s

    kv = pytest.importorskip("kubernetes_validate")
    docs = k8s.documents(text)
    assert docs, text
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)  # raises kubernetes_validate.ValidationError
    return docs


def in_process_services(registry: str, tmp_path: Path):
    """For a fixture to ``yield from``: ``make(upstream=None, bake_fn=None, **kw)`` starts a
    ``bakery serve`` in this process, on a free port, in front of ``upstream`` (default: the
    registry), with a stub bake that answers a fixed digest unless ``bake_fn`` is given; each
    service's JSON log is tmp_path/serve-N.log. All are stopped after the test."""
    from bakery.serve import proxy
    from bakery.serve.metrics import JsonLog

    made, logs = [], []

    def make(upstream: str | None = None, bake_fn=None, **kw):
        logs.append(open(tmp_path / f"serve-{len(made)}.log", "w"))
        srv = proxy.make_server(upstream=f"http://{upstream or registry}", listen="127.0.0.1:0",
                                bake_fn=bake_fn or (lambda flight, lazy: "sha256:" + "0" * 64),
                                log=JsonLog(logs[-1]), **kw)
        proxy.serve_in_thread(srv)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()
    for f in logs:
        f.close()
