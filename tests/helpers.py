"""What tests share that is not a fixture: the repository's paths, small projects, verify scripts,
disassembly. Fixtures are in conftest.py."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
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


# -- bakery serve as its users start it, and registry chores -------------------------------------

def process_limits(pid: int) -> dict[str, tuple[str, str]]:
    """The nofile and nproc rlimits (soft, hard) of a process, where they are not unlimited."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        for key, name in (("Max open files", "nofile"), ("Max processes", "nproc")):
            if line.startswith(key):
                soft, hard = line[len(key):].split()[:2]
                if "unlimited" not in (soft, hard):
                    out[name] = (soft, hard)
    return out


def podman_containers_conf(path: Path) -> Path:
    """A containers.conf for `podman run` here: containers keep podman's own rlimits (raising one
    needs CAP_SYS_RESOURCE, which this sandbox does not give; podman's default nofile is 1048576),
    cgroupfs and a file events log (no systemd). The limits are read from a podman process."""
    limits: dict[str, tuple[str, str]] = {}
    p = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{path.parent}/limits.sock"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (path.parent / "limits.sock").exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)  # the service has set its limits once it listens
        if p.poll() is None:
            limits = process_limits(p.pid)
    finally:
        p.terminate()
        p.wait(15)
    ulimits = ", ".join(f'"{k}={s}:{h}"' for k, (s, h) in sorted(limits.items()))
    runtime = 'runtime = "runc"\n' if subprocess.run(["sh", "-c", "command -v runc"], capture_output=True).returncode == 0 else ""
    path.write_text(f"[containers]\ndefault_ulimits = [{ulimits}]\n[engine]\ncgroup_manager = \"cgroupfs\"\n"
                    f"events_logger = \"file\"\n{runtime}")
    return path


def request(addr: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
            timeout: float = 300) -> tuple[int, dict, bytes]:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def fresh(registry: str, repo: str, tag: str) -> None:
    """Make sure ``repo:tag`` is not in the registry (another module may have baked it)."""
    from bakery import oci

    reg = oci.Registry(registry)
    digest = reg.head_manifest(repo, tag)
    if digest:
        assert reg.delete_manifest(repo, digest)
    assert reg.head_manifest(repo, tag) is None


class Service:
    """``bakery serve`` as a subprocess of its own session (so kill -9 takes its bakes too)."""

    def __init__(self, registry: str, log_path, *extra: str):
        self.registry, self.log_path, self.extra = registry, log_path, extra
        from bakery.images import registry as registrymod

        self.addr = f"127.0.0.1:{registrymod.free_port()}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bakery", "serve", "--upstream", f"http://{self.registry}",
                                      "--listen", self.addr, *self.extra],
                                     stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if request(self.addr, "GET", "/healthz", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"bakery serve did not come up:\n{self.log()}")

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def bakes(self) -> list[dict]:
        return [rec for line in self.log_path.read_text().splitlines()
                if line.startswith("{") and (rec := json.loads(line)).get("event") == "bake"]


# -- node-feature-discovery image compatibility (bakery/compat.py) --------------------------------

def _nfd_expression() -> dict:
    ops = ["In", "NotIn", "InRegexp", "Exists", "DoesNotExist", "Gt", "Ge", "Lt", "Le", "GtLt", "GeLe", "IsTrue",
           "IsFalse"]
    return {"type": "object", "required": ["op"], "additionalProperties": False,
            "properties": {"op": {"enum": ops}, "value": {"type": "array", "items": {"type": "string"}},
                           "type": {"type": "string"}}}


_NFD_TERMS = {"type": "array", "items": {
    "type": "object", "required": ["feature"], "additionalProperties": False,
    "properties": {"feature": {"type": "string"},
                   "matchExpressions": {"type": "object", "additionalProperties": _nfd_expression()},
                   "matchName": _nfd_expression()}}}

# The v1alpha1 spec as NFD documents it, field names exactly NFD's: the top level and a compatibility
# set from api/image-compatibility/v1alpha1/spec.go and docs/usage/image-compatibility.md, a rule
# (GroupRule, NFD >= 0.18) from the featureGroupRules item of the NodeFeatureGroup CRD schema
# (deployment/base/nfd-crds/nfd-api-crds.yaml), written out here, not copied.
NFD_COMPAT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "required": ["version", "compatibilities"], "additionalProperties": False,
    "properties": {
        "version": {"const": "v1alpha1"},
        "compatibilities": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["rules"], "additionalProperties": False,
            "properties": {
                "rules": {"type": "array", "items": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "vars": {"type": "object", "additionalProperties": {"type": "string"}},
                        "varsTemplate": {"type": "string"},
                        "matchFeatures": _NFD_TERMS,
                        "matchAny": {"type": "array", "items": {
                            "type": "object", "required": ["matchFeatures"], "additionalProperties": False,
                            "properties": {"matchFeatures": _NFD_TERMS}}}}}},
                "weight": {"type": "integer"},
                "tag": {"type": "string"},
                "description": {"type": "string"}}}}}}


def validate_nfd_compat(doc) -> None:
    """Raise jsonschema.ValidationError unless ``doc`` is a v1alpha1 image compatibility spec."""
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(NFD_COMPAT_SCHEMA)
    jsonschema.Draft202012Validator(NFD_COMPAT_SCHEMA).validate(doc)


_NFD = "feature.node.kubernetes.io/"
# NFD's labels of a node as nfd-worker's default configuration labels it (its attributeBlacklist
# leaves out BMI1, BMI2, CMOV, CX16, F16C, LZCNT, MMX, POPCNT, SSE..SSSE3): an x86_64_v2 CPU (Intel
# Westmere: SSE4.2, AES-NI, no AVX), and an x86_64_v3 one (Haswell: AVX2, FMA3, MOVBE).
NFD_LABELS_V2 = {
    "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
    **{f"{_NFD}cpu-cpuid.{f}": "true" for f in ("AESNI", "CMPXCHG8", "FXSR", "FXSROPT", "LAHF", "SYSCALL",
                                                "SYSEE", "X87", "VMX")},
    f"{_NFD}cpu-model.vendor_id": "Intel", f"{_NFD}cpu-model.family": "6", f"{_NFD}cpu-model.id": "44",
    f"{_NFD}cpu-hardware_multithreading": "true",
}
NFD_LABELS_V3 = {
    **NFD_LABELS_V2,
    **{f"{_NFD}cpu-cpuid.{f}": "true" for f in ("AVX", "AVX2", "FMA3", "MOVBE", "OSXSAVE", "XSAVE", "XSAVEOPT",
                                                "ADX")},
    f"{_NFD}cpu-model.id": "63",
}


def node_json(name: str, labels: dict) -> dict:
    """A Node as `kubectl get node NAME -o json` prints it (the parts that matter here)."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"}}}
