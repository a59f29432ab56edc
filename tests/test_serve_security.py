"""bakery serve against untrusted clients: each test makes the attack on a real service on
loopback, in front of a real registry (the session's CNCF distribution, or a small real
front to it that demands tokens for private/ repositories), over real sockets.

Fast, with stub bakes, except the two that need a real IR image with a plan (slow: they
share the session's pi image with test_serve)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bakery import oci
from bakery import serve as servemod
from bakery.errors import BakeryError
from bakery.serve_lazy import JsonLog, Policy

ACCEPT = oci.ACCEPT
FAKE = "sha256:" + "0" * 64


# -- helpers ---------------------------------------------------------------------

def hostport(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def raw(addr: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are; everything the service answers until it closes (or ``timeout``)."""
    with socket.create_connection(hostport(addr), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while piece := s.recv(65536):
                out += piece
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, body


def oci_error(body: bytes) -> dict:
    errs = json.loads(body)["errors"]
    assert len(errs) == 1 and errs[0]["code"] and errs[0]["message"], errs
    return errs[0]


def request(addr: str, method: str, path: str, headers: dict | None = None, timeout: float = 30):
    c = http.client.HTTPConnection(*hostport(addr), timeout=timeout)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def get_manifest(addr: str, repo: str, tag: str, headers: dict | None = None, method: str = "GET"):
    return request(addr, method, f"/v2/{repo}/manifests/{tag}", {"Accept": ACCEPT, **(headers or {})})


def push_small(registry: str, repo: str, *tags: str) -> str:
    """A small image (no plan: not bakeable), under each tag."""
    reg = oci.Registry(registry)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, layer = Path(tmp) / "config", Path(tmp) / "layer"
        cfg.write_text(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}))
        layer.write_bytes(os.urandom(1024))
        c = reg.push_blob(repo, cfg, "application/vnd.oci.image.config.v1+json")
        layer_desc = reg.push_blob(repo, layer, "application/vnd.oci.image.layer.v1.tar")
    data = json.dumps({"schemaVersion": 2, "mediaType": oci.MANIFEST, "config": c, "layers": [layer_desc]}).encode()
    return [reg.put_manifest(repo, t, data, oci.MANIFEST) for t in tags][-1]


def wait_for(cond, timeout: float, what: str, step: float = 0.02):
    t_end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t_end, what
        time.sleep(step)


@pytest.fixture(scope="module")
def small(registry):
    """sec/app:1.0 and its node tag sec/app:1.0-x86_64_v3 (a cache hit)."""
    return push_small(registry, "sec/app", "1.0", "1.0-x86_64_v3")


@pytest.fixture
def serve(registry, tmp_path):
    """In-process services with a stub bake, on a free port; ``upstream`` defaults to the registry."""
    made = []

    def make(upstream: str | None = None, bake_fn=None, **kw):
        srv = servemod.make_server(upstream=f"http://{upstream or registry}", listen="127.0.0.1:0",
                                   bake_fn=bake_fn or (lambda flight, lazy: FAKE),
                                   log=JsonLog(open(tmp_path / f"serve-{len(made)}.log", "w")), **kw)
        servemod.serve_in_thread(srv)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()


# -- 1. a bake time limit ---------------------------------------------------------------

@pytest.mark.slow
def test_a_hanging_bake_is_abandoned_and_the_worker_bakes_the_next(serve, images):
    images.ir("pi")
    release, calls = threading.Event(), []

    def bake(flight, lazy):
        calls.append(flight.node.tag)
        if flight.node.target == "bulldozer":
            release.wait()  # hangs for good (until the test ends)
        raise BakeryError(f"stub: {flight.node.tag} baked nothing")

    srv = serve(bake_fn=bake, workers=1, bake_timeout=1.0, deadline=30, backoff=30)
    m = srv.lazy.metrics
    try:
        t0 = time.monotonic()
        status, headers, body = get_manifest(srv.address, "pi", "1.0-bulldozer")
        took = time.monotonic() - t0
        err = oci_error(body)
        assert status == 504 and "exceeded 1 s" in err["message"] and int(headers["retry-after"]) >= 1, body
        assert 1.0 <= took < 10, took
        # The hung bake still runs, yet the single worker takes the next flight.
        status, _, body = get_manifest(srv.address, "pi", "1.0-piledriver")
        assert status == 502 and "stub: 1.0-piledriver" in oci_error(body)["message"], body
        assert calls == ["1.0-bulldozer", "1.0-piledriver"] and not release.is_set()
        assert any(t.name.startswith("bake-1.0-bulldozer") for t in threading.enumerate())
        # The time-out is remembered like any failure: no second bake within the backoff.
        status, _, body = get_manifest(srv.address, "pi", "1.0-bulldozer")
        assert status == 504 and calls == ["1.0-bulldozer", "1.0-piledriver"]
        assert m.timed_out._value.get() == 1 and m.in_flight._value.get() == 0
    finally:
        release.set()


def test_bake_timeout_is_passed_to_the_real_bake(monkeypatch):
    """bake_with_engine hands --bake-timeout to bakery.image.bake (which kills the bake's processes)."""
    from bakery import image as imagemod
    from bakery.serve_lazy import Flight, Lazy, bake_with_engine, parse_node_tag

    seen = {}

    def fake_bake(text, engine, registry, target_name, *, push=True, slim=False, output=None, jobs=0,
                  quiet=False, tls_verify=None, timeout=None):
        seen.update(text=text, target=target_name, timeout=timeout)
        return type("R", (), {"digest": FAKE})()

    monkeypatch.setattr(imagemod, "bake", fake_bake)
    lazy = Lazy("127.0.0.1:1", lambda f, l: FAKE, bake_timeout=42.0, log=JsonLog(open(os.devnull, "w")))
    assert bake_with_engine(object())(Flight("pi", parse_node_tag("1.0-zen4")), lazy) == FAKE
    assert seen == {"text": "127.0.0.1:1/pi:1.0", "target": "zen4", "timeout": 42.0}
    with pytest.raises(BakeryError, match="bake-timeout"):
        Lazy("127.0.0.1:1", lambda f, l: FAKE, bake_timeout=0)


# -- 5. a clamped target must be allowed as resolved ----------------------------------------------

@pytest.mark.slow
def test_a_clamped_target_needs_the_policy_to_allow_the_resolved_one(serve, images, tmp_path):
    from bakery import target as targetmod

    pi = images.ir("pi")  # noqa: F841 - the IR image, in the registry
    if targetmod.resolve("zen6", compiler_version="16.0.6", family="x86_64").name != "zen4":
        pytest.skip("archspec no longer clamps zen6 for clang 16")
    calls = []

    def bake(flight, lazy):
        calls.append(flight.target.name)
        raise BakeryError("stub: nothing baked")

    only_zen6 = Policy.from_dict({"rules": [{"repositories": ["pi"], "targets": ["zen6"]}]}, "only-zen6")
    srv = serve(bake_fn=bake, policy=only_zen6)
    status, _, body = get_manifest(srv.address, "pi", "1.0-zen6")
    err = oci_error(body)
    assert status == 403 and err["code"] == "DENIED" and "baked as zen4" in err["message"], body
    assert calls == [] and srv.lazy.metrics.started._value.get() == 0
    both = Policy.from_dict({"rules": [{"repositories": ["pi"], "targets": ["zen6", "zen4"]}]}, "zen6-and-zen4")
    srv = serve(bake_fn=bake, policy=both)
    status, _, body = get_manifest(srv.address, "pi", "1.0-zen6")
    assert status == 502 and calls == ["zen4"], body
