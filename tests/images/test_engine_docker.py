"""The Docker API engine, tested against podman's API service (no Docker needed).

A session fixture starts ``podman system service`` on a private socket with a
containers.conf that works without systemd and without CAP_SYS_RESOURCE (see
docs/engines.md). The end-to-end tests build, bake and run the pi example
through it, check the node tag is the IR image plus one thin layer, and reuse
node tags across engines (buildah <-> docker). Image names carry ``-docker`` so
they never collide with buildah's in the shared /var/lib/containers store.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import EXAMPLES, process_limits, run_verify

from bakery import engines as enginemod
from bakery import images as imagemod
from bakery import oci
from bakery.errors import BakeryError, CommandFailed

docker = pytest.importorskip("docker", reason="the docker engine needs the docker Python SDK (pip install docker)")
from bakery.engines.docker import DockerEngine, _version_tuple, candidate_sockets, socket_answers  # noqa: E402

CONTAINERS_CONF = """\
# Written by tests/test_engine_docker.py for its podman API service; see docs/engines.md.
[containers]
{ulimits}
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
{runtime}
"""


# -- fakes: a daemon that answers /_ping and /version, a registry that refuses pushes ------------

class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _fake_daemon(path: Path, api_version: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.endswith("/_ping"):
                body, ctype = b"OK", "text/plain"
            elif self.path.endswith("/version"):
                body = json.dumps({"Version": "17.06.0", "ApiVersion": api_version, "MinAPIVersion": "1.12",
                                   "Os": "linux", "Arch": "amd64"}).encode()
                ctype = "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def address_string(self):
            return "unix"

        def log_message(self, *args):
            pass

    srv = _UnixHTTPServer(str(path), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@contextlib.contextmanager
def fake_daemon(tmp_path, api_version="1.41"):
    sock = tmp_path / "fake-docker.sock"
    srv = _fake_daemon(sock, api_version)
    try:
        yield f"unix://{sock}"
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def refusing_registry():
    """Answers /v2/ like a registry and refuses every upload with DENIED."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, code, doc=None):
            body = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path in ("/v2/", "/v2"):
                self._answer(200, {})
            else:
                self._answer(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]})

        do_HEAD = do_GET

        def _deny(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(403, {"errors": [{"code": "DENIED", "message": "pushes are refused here"}]})

        do_POST = do_PUT = do_PATCH = _deny

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


# -- quick tests: no daemon needed ----------------------------------------------------------------

def test_unreachable_socket_names_the_engine_and_what_to_do(tmp_path):
    with pytest.raises(BakeryError) as e:
        DockerEngine(f"unix://{tmp_path}/nothing.sock")
    assert "docker engine" in e.value.message and "nothing.sock" in e.value.message
    assert "DOCKER_HOST" in e.value.hint and "--engine buildah" in e.value.hint


def test_unreachable_docker_host_through_get(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(BakeryError, match="no daemon answers"):
        enginemod.get("docker")
    monkeypatch.setenv("BAKERY_ENGINE", "docker")
    with pytest.raises(BakeryError, match="no daemon answers"):
        enginemod.get()


def test_too_old_daemon_is_refused(tmp_path):
    with fake_daemon(tmp_path, api_version="1.30") as url:
        with pytest.raises(BakeryError) as e:
            DockerEngine(url)
    assert "API 1.30" in e.value.message and "1.40" in e.value.message
    assert "upgrade" in e.value.hint


def test_sockets_looked_for(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert candidate_sockets()[:2] == ["unix:///var/run/docker.sock", "unix:///run/podman/podman.sock"]
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert candidate_sockets() == ["tcp://127.0.0.1:2375"]


def test_unknown_engine_lists_docker():
    with pytest.raises(BakeryError) as e:
        enginemod.get("nosuch")
    assert "docker" in e.value.hint and "buildah" in e.value.hint


def test_automatic_choice(tmp_path, monkeypatch):
    """BAKERY_ENGINE unset: buildah when it is on PATH, else docker when a socket answers."""
    monkeypatch.delenv("BAKERY_ENGINE", raising=False)
    real_which = shutil.which
    with fake_daemon(tmp_path) as url:
        monkeypatch.setenv("DOCKER_HOST", url)
        assert socket_answers() == url
        monkeypatch.setattr(enginemod.shutil, "which", lambda t, *a, **k: "/usr/bin/buildah" if t == "buildah"
                            else real_which(t, *a, **k))
        monkeypatch.setitem(enginemod.ENGINES, "buildah", lambda: "buildah-engine")
        assert enginemod.get() == "buildah-engine"
        monkeypatch.setattr(enginemod.shutil, "which", lambda t, *a, **k: None if t == "buildah"
                            else real_which(t, *a, **k))
        eng = enginemod.get()
        assert isinstance(eng, DockerEngine) and eng.url == url
        monkeypatch.setenv("BAKERY_ENGINE", "buildah")  # an explicit choice wins
        assert enginemod.get() == "buildah-engine"
    monkeypatch.delenv("BAKERY_ENGINE")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/gone.sock")
    assert socket_answers() is None
    assert enginemod.get() == "buildah-engine"  # nothing answers: buildah, whose absence is the error to show


# -- podman's API service -------------------------------------------------------------------------

def _answers(url: str) -> bool:
    path = url[len("unix://"):]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(path)
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        return b" 200 " in s.recv(200)
    return False


def _start_service(exe: str, url: str, conf: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    p = subprocess.Popen([exe, "system", "service", "--time=0", url], env=env, stdin=subprocess.DEVNULL,
                         stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        if _answers(url):
            return p
        time.sleep(0.2)
    _stop(p)
    pytest.skip(f"podman system service did not start: {log.read_text(errors='replace')[-600:]}")


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory):
    """unix:// URL of a rootful podman API service on a private socket (shares /var/lib/containers)."""
    exe = shutil.which("podman")
    if not exe:
        pytest.skip("podman is not installed (apt-get install podman runc): the docker engine is tested "
                    "against podman's Docker-compatible API")
    if os.geteuid() != 0:
        pytest.skip("the podman API service for these tests runs as root (as buildah does here)")
    d = tmp_path_factory.mktemp("podman")
    url, conf, log = f"unix://{d}/podman.sock", d / "containers.conf", d / "podman.log"
    runtime = 'runtime = "runc"' if shutil.which("runc") else ""
    # First start: learn the limits podman itself runs with. Containers get those and no more, since
    # raising a limit needs CAP_SYS_RESOURCE, which a sandbox may not give (podman's default is 1048576).
    conf.write_text(CONTAINERS_CONF.format(ulimits="", runtime=runtime))
    p = _start_service(exe, url, conf, log)
    limits = process_limits(p.pid)
    _stop(p)
    ulimits = ", ".join(f'"{k}={s}:{h}"' for k, (s, h) in sorted(limits.items()))
    conf.write_text(CONTAINERS_CONF.format(ulimits=f"default_ulimits = [{ulimits}]", runtime=runtime))
    p = _start_service(exe, url, conf, log)
    yield url
    _stop(p)


@pytest.fixture(scope="session")
def docker_engine(docker_host):
    return DockerEngine(docker_host)


class DockerImages:
    """Session cache of IR images built through the Docker API (``<name>-docker:1.0``)."""

    def __init__(self, engine, registry, builds):
        self.engine, self.registry, self.builds = engine, registry, builds
        self._built = {}

    def ir(self, name: str):
        if name not in self._built:
            self._built[name] = imagemod.build(self.builds.recipe(name), self.engine, self.registry,
                                               tag=f"{name}-docker:1.0")
        return self._built[name]


@pytest.fixture(scope="session")
def docker_images(docker_engine, registry, builds):
    yield DockerImages(docker_engine, registry, builds)
    # The store is shared with buildah and outlives the session's registry: drop this session's names.
    def ours(name: str) -> bool:
        return name.startswith(f"{registry}/") and ("-docker:" in name or "-docker@" in name)

    for img in docker_engine.api.images(all=True):
        if any(ours(n) for n in (img.get("RepoTags") or []) + (img.get("RepoDigests") or [])):
            for name in img.get("RepoTags") or []:
                if ours(name):
                    docker_engine.remove_image(name)
            with contextlib.suppress(docker.errors.APIError):
                docker_engine.api.remove_image(img["Id"])  # refused while another name or a container uses it


def skopeo_raw(ref: str) -> dict:
    cp = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                        capture_output=True, text=True, check=True)
    return json.loads(cp.stdout)


def skopeo_config(ref: str) -> dict:
    cp = subprocess.run(["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{ref}"],
                        capture_output=True, text=True, check=True)
    return json.loads(cp.stdout)


def run_in_image(engine, ref: str, argv: list[str], volumes=(), pull: bool = True) -> str:
    if pull:
        engine.pull(ref, tls_verify=False)
    ctr = engine.from_image(ref)
    lines: list[str] = []
    try:
        engine.run(ctr, argv, volumes=volumes, on_line=lines.append)
    finally:
        engine.remove(ctr)
    return "".join(line + "\n" for line in lines)


@pytest.fixture
def tiny_rootfs(tmp_path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "etc/hello").write_text("hello from a tiny rootfs\n")
    (root / "usr/local/bin/tool").write_text("#!/bin/sh\necho tool\n")
    (root / "usr/local/bin/tool").chmod(0o755)
    (root / "etc/link").symlink_to("hello")
    return root


# -- against podman -------------------------------------------------------------------------------

@pytest.mark.slow
def test_engine_reports_podman_and_is_chosen_automatically(docker_host, docker_engine, monkeypatch):
    assert docker_engine.podman and _version_tuple(docker_engine.api_version) >= (1, 40)
    monkeypatch.delenv("BAKERY_ENGINE", raising=False)
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    real_which = shutil.which
    monkeypatch.setattr(enginemod.shutil, "which", lambda t, *a, **k: None if t == "buildah"
                        else real_which(t, *a, **k))
    eng = enginemod.get()
    assert eng.name == "docker" and eng.url == docker_host


@pytest.mark.slow
def test_import_read_tag_exists_remove(docker_engine, tiny_rootfs):
    eng, name = docker_engine, f"localhost/bakery-docker-test/tiny:{os.getpid()}"
    iid = eng.import_rootfs(tiny_rootfs, name, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, cmd=["/bin/sh"],
                            labels={"dev.bakery.base": "tiny, with a comma"})
    try:
        assert eng.exists(name) and eng.exists(iid)
        info = eng.inspect(name)
        cfg = info["OCIv1"]["config"]
        assert cfg["Cmd"] == ["/bin/sh"] and "PATH=/usr/local/bin:/usr/bin:/bin" in cfg["Env"]
        assert cfg["Labels"]["dev.bakery.base"] == "tiny, with a comma"
        assert len(info["OCIv1"]["rootfs"]["diff_ids"]) == 1
        assert eng.read_file(name, "/etc/hello") == b"hello from a tiny rootfs\n"
        with pytest.raises(BakeryError, match="not found"):
            eng.read_file(name, "/etc/nosuch")
        eng.tag(name, f"{name}-again")
        assert eng.inspect(f"{name}-again")["Id"] == info["Id"]
        eng.remove_image(f"{name}-again")
        assert not eng.exists(f"{name}-again") and eng.exists(name)
        ctr = eng.from_image(name, name=f"bakery-dtest-{os.getpid()}-1-{int(time.time())}")
        assert ctr in eng.containers()
        eng.remove(ctr)
        assert ctr not in eng.containers()
    finally:
        eng.remove_image(name)
    assert not eng.exists(name)


@pytest.mark.slow
def test_debian_base_from_debootstrap_through_the_docker_api(docker_engine):
    """import_rootfs with a real debootstrap tree: device nodes, hard links, modes, then a shell in it."""
    from bakery.images import base as basemod

    name = f"localhost/bakery-docker-test/debian:{os.getpid()}"
    basemod.make_runtime(docker_engine, name)
    try:
        cfg = docker_engine.inspect(name)["OCIv1"]["config"]
        assert cfg["Cmd"] == ["/bin/bash"] and cfg["Labels"]["dev.bakery.base"] == "debian-bookworm-minbase"
        out = run_in_image(docker_engine, name, ["bash", "-c", "stat -c '%a %U' /tmp /root; apt-get --version"],
                           pull=False)
        assert out.startswith("1777 root\n700 root\napt ")
    finally:
        docker_engine.remove_image(name)


@pytest.mark.slow
def test_push_refused_by_the_registry_is_clear(docker_engine, tiny_rootfs):
    eng, name = docker_engine, f"localhost/bakery-docker-test/refused:{os.getpid()}"
    eng.import_rootfs(tiny_rootfs, name, env={}, cmd=["/bin/sh"])
    try:
        with refusing_registry() as reg:
            with pytest.raises(BakeryError) as e:
                eng.push(name, f"{reg}/refused:1", tls_verify=False)
        assert "docker engine" in e.value.message and "refused the push" in e.value.message
        assert "credentials" in e.value.hint
        assert eng.exists(name) and not eng.exists(f"{reg}/refused:1")  # the push's own tag is gone
    finally:
        eng.remove_image(name)


@pytest.mark.slow
def test_build_bake_and_verify_pi_through_the_docker_api(docker_images, docker_engine, registry, builds, tmp_path):
    eng = docker_engine
    res = docker_images.ir("pi")
    assert res.ref.startswith(f"{registry}/pi-docker:1.0@sha256:")
    reg = oci.Registry(registry)
    digest, plan, _ = imagemod.resolve_ir(reg, oci.Ref.parse(f"{registry}/pi-docker:1.0"))
    assert digest == res.digest and plan.app.to_json() == {"name": "pi", "version": "1.0"}
    # The Docker build API has no annotations: they are labels of the IR image.
    labels = skopeo_config(f"{registry}/pi-docker:1.0")["config"]["Labels"]
    assert labels["dev.bakery.toolchain"] == "llvm-16" and labels["org.opencontainers.image.title"] == "pi"

    node = imagemod.bake(f"{registry}/pi-docker:1.0", eng, registry, "x86_64_v3")
    assert not node.reused and node.ref.startswith(f"{registry}/pi-docker:1.0-x86_64_v3@sha256:")
    assert node.outputs == ["pi"]
    ir_layers = skopeo_raw(f"{registry}/pi-docker:1.0")["layers"]
    node_layers = skopeo_raw(f"{registry}/pi-docker:1.0-x86_64_v3")["layers"]
    assert [l["digest"] for l in node_layers[:-1]] == [l["digest"] for l in ir_layers]
    assert len(node_layers) == len(ir_layers) + 1
    out = imagemod.bake(f"{registry}/pi-docker:1.0", eng, registry, "x86_64_v3", output=tmp_path / "bin")
    compressed = sum(len(gzip.compress((tmp_path / "bin" / n).read_bytes())) for n in out.outputs)
    assert node_layers[-1]["size"] <= 1.1 * compressed + 512, (node_layers[-1]["size"], compressed)

    cfg = skopeo_config(f"{registry}/pi-docker:1.0-x86_64_v3")["config"]
    assert cfg["Entrypoint"] == ["/usr/local/bin/pi"] and not cfg.get("Cmd")
    assert cfg["Labels"]["dev.bakery.target"] == "x86_64_v3"
    assert cfg["Labels"]["dev.bakery.ir.digest"] == res.digest  # an annotation, as a label

    inside = run_in_image(eng, f"{registry}/pi-docker:1.0-x86_64_v3", ["/verify/verify", "/usr/local/bin"],
                          volumes=[(str(EXAMPLES / "pi"), "/verify")])
    assert inside == run_verify("pi", builds.from_source("pi"))

    t0 = time.monotonic()
    again = imagemod.bake(f"{registry}/pi-docker:1.0", eng, registry, "x86_64_v3")
    assert again.reused and again.digest == node.digest and time.monotonic() - t0 < 5
    assert not [c for c in eng.containers() if c.startswith(f"bakery-bake-{os.getpid()}-")]


@pytest.mark.slow
def test_cli_engine_docker(docker_images, docker_engine, docker_host, registry, monkeypatch, capsys):
    """`--engine docker` (and BAKERY_ENGINE=docker) reach the daemon at DOCKER_HOST."""
    from bakery.cli import main

    docker_images.ir("pi")
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    argv = ["bake", f"{registry}/pi-docker:1.0", "-t", "x86_64_v4", "--registry", registry, "--json"]
    assert main([*argv, "--engine", "docker"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert not first["reused"] and first["outputs"] == ["pi"]
    monkeypatch.setenv("BAKERY_ENGINE", "docker")
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"] and again["digest"] == first["digest"]


@pytest.mark.slow
def test_slim_bake_through_the_docker_api(docker_images, docker_engine, registry):
    docker_images.ir("pi")
    res = imagemod.bake(f"{registry}/pi-docker:1.0", docker_engine, registry, "x86_64", slim=True)
    layers = skopeo_raw(res.ref.split("@")[0])["layers"]
    base = skopeo_raw(f"{registry}/bakery/debian:bookworm")["layers"]
    assert [l["digest"] for l in layers[:-1]] == [l["digest"] for l in base]
    assert "pi = 3.14159" in run_in_image(docker_engine, res.ref.split("@")[0], ["pi", "100000", "2"])


@pytest.mark.slow
def test_failing_command_raises_command_failed_with_exit_code_and_tail(docker_images, docker_engine, registry, tmp_path):
    docker_images.ir("pi")
    eng = docker_engine
    ctr = eng.from_image(f"{registry}/pi-docker:1.0")
    try:
        with pytest.raises(CommandFailed) as e:
            eng.run(ctr, ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"], log=tmp_path / "run.log")
    finally:
        eng.remove(ctr)
    assert e.value.returncode == 3
    assert "to-out" in e.value.output and "to-err" in e.value.output
    assert "to-err" in (tmp_path / "run.log").read_text() and "run.log" in e.value.hint


@pytest.mark.slow
def test_node_tags_are_reused_across_engines(images, engine, docker_images, docker_engine, registry):
    """A node tag baked by buildah is reused by the docker engine, and one baked through the Docker API
    by buildah: nothing is pulled or compiled. The docker engine also bakes buildah's IR image."""
    images.ir("pi")
    by_buildah = imagemod.bake(f"{registry}/pi:1.0", engine, registry, "x86_64_v2")
    t0 = time.monotonic()
    seen = imagemod.bake(f"{registry}/pi:1.0", docker_engine, registry, "x86_64_v2")
    assert seen.reused and seen.digest == by_buildah.digest and time.monotonic() - t0 < 5

    docker_images.ir("pi")
    by_docker = imagemod.bake(f"{registry}/pi-docker:1.0", docker_engine, registry, "x86_64_v2")
    assert not by_docker.reused
    t0 = time.monotonic()
    seen = imagemod.bake(f"{registry}/pi-docker:1.0", engine, registry, "x86_64_v2")
    assert seen.reused and seen.digest == by_docker.digest and time.monotonic() - t0 < 5

    # buildah's IR image (OCI manifests), pulled by digest and baked through the Docker API.
    cross = imagemod.bake(f"{registry}/pi:1.0", docker_engine, registry, "haswell")
    assert not cross.reused
    ir_layers = skopeo_raw(f"{registry}/pi:1.0")["layers"]
    node_layers = skopeo_raw(f"{registry}/pi:1.0-haswell")["layers"]
    assert [l["digest"] for l in node_layers[:-1]] == [l["digest"] for l in ir_layers]
    assert len(node_layers) == len(ir_layers) + 1


@pytest.mark.slow
def test_the_ir_image_runs_through_the_docker_api(docker_host, images, registry, tmp_path):
    """What `docker run IR args` does: the Docker API (podman's service here) creates and starts the
    IR image with its own entrypoint and the app's arguments; the launcher bakes once into the
    mounted cache and runs the app, and the next container just runs it."""
    images.ir("wordstat")
    client = docker.DockerClient(base_url=docker_host, version="auto", timeout=300)
    cache = tmp_path / "cache"
    cache.mkdir()

    def start() -> tuple[int, str, str]:
        ctr = client.containers.run(f"{registry}/wordstat:1.0", ["/etc/os-release"], detach=True,
                                    environment={"BAKERY_TARGET": "x86_64_v3"}, network_mode="none",
                                    volumes={str(cache): {"bind": "/var/cache/bakery", "mode": "rw"}})
        try:
            code = ctr.wait(timeout=300)["StatusCode"]
            return code, ctr.logs(stdout=True, stderr=False).decode(), ctr.logs(stdout=False, stderr=True).decode()
        finally:
            ctr.remove(force=True)

    code, out, err = start()
    assert code == 0 and out.startswith("words: "), err
    assert err.startswith("bakery: baking wordstat 1.0 for x86_64_v3: the first start on this CPU type")
    again = start()
    assert again == (0, out, "")
