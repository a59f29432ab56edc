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
from helpers import REPO, in_process_services

from bakery import oci
from bakery.errors import BakeryError
from bakery.serve import proxy as servemod
from bakery.serve.metrics import JsonLog
from bakery.serve.policy import Policy, parse_node_tag, split_tag

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
    yield from in_process_services(registry, tmp_path)


# -- a real front to the registry: records what reaches it, demands tokens for private/ ----------

USERS = {"serve:servepass": "serve-token", "alice:alicepass": "alice-token", "guest:guestpass": "guest-token"}
SEES_PRIVATE = {"Bearer serve-token", "Bearer alice-token"}


class Front(ThreadingHTTPServer):
    """What a registry with token auth does: ``/v2/private/...`` without a token is 401 with a
    Bearer challenge (realm: its ``/token``, which takes Basic credentials); with the token of a
    user who may not see private/ it is 404 NAME_UNKNOWN (private repositories are hidden, as
    hosted registries do); serve's and alice's tokens see everything. Everything else is the
    registry's own answer. ``seen`` records (method, path, Authorization) of every request."""

    daemon_threads = True

    def __init__(self, registry: str):
        self.registry = registry
        self.seen: list[tuple[str, str, str | None]] = []
        self.connections = 0
        super().__init__(("127.0.0.1", 0), FrontHandler)
        self.address = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Front

    def log_message(self, *a):
        pass

    def setup(self):
        self.server.connections += 1
        super().setup()

    def answer(self, status: int, doc: dict, headers: dict | None = None):
        body = json.dumps(doc).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        auth = self.headers.get("Authorization")
        self.server.seen.append((self.command, self.path, auth))
        if self.path.startswith("/token"):
            user = base64.b64decode(auth.split(" ", 1)[1]).decode() if auth and auth.startswith("Basic ") else ""
            if user not in USERS:
                return self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            return self.answer(200, {"token": USERS[user]})
        if self.path.startswith("/v2/private/"):
            repo = self.path.split("/")[2:4]
            if auth is None:
                return self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                                   {"WWW-Authenticate": f'Bearer realm="http://{self.server.address}/token",'
                                                        f'service="front",scope="repository:{"/".join(repo)}:pull"'})
            if auth == "Bearer lister-token" and "/manifests/" in self.path:
                # Existence first, rights second (as some registries do): 404 for a missing tag, else 403.
                c = http.client.HTTPConnection(*hostport(self.server.registry), timeout=30)
                c.request("HEAD", self.path, headers={"Accept": ACCEPT})
                found = c.getresponse().status == 200
                c.close()
                if found:
                    return self.answer(403, {"errors": [{"code": "DENIED", "message": "requested access to the "
                                                         "resource is denied"}]}, {"X-Front": "denied"})
            elif auth not in SEES_PRIVATE:
                return self.answer(404, {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]})
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        c = http.client.HTTPConnection(*hostport(self.server.registry), timeout=30)
        skip = {"host", "authorization", "connection", "content-length"}
        c.request(self.command, self.path, body=body, headers={k: v for k, v in self.headers.items() if k.lower() not in skip})
        r = c.getresponse()
        data = r.read()
        c.close()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", r.getheader("Content-Length", str(len(data))) if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET


@pytest.fixture
def front(registry):
    f = Front(registry)
    yield f
    f.shutdown()
    f.server_close()


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
    from bakery import images as imagemod
    from bakery.serve.lazy import Flight, Lazy, bake_with_engine

    seen = {}

    def fake_bake(text, engine, registry, target_name, *, push=True, slim=False, output=None, jobs=0,
                  tls_verify=None, timeout=None):
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


# -- 4. serve's credentials tell nothing a client may not see ----------------------------------

def test_private_tags_stay_hidden_from_clients_that_cannot_see_them(serve, front, registry, tmp_path, monkeypatch):
    push_small(registry, "private/app", "1.0")  # a private IR image (no plan: any bake of it fails)
    auth = tmp_path / "auth.json"  # serve's own credentials, for the front
    auth.write_text(json.dumps({"auths": {front.address: {"auth": base64.b64encode(b"serve:servepass").decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    srv = serve(upstream=front.address, backoff=0)
    m = srv.lazy.metrics
    # What the gate keeps from clients: with its own credentials, serve's answers differ by whether
    # the private IR image exists (a bake of 1.0 fails on its missing plan; 9.9 does not exist).
    seen = srv.lazy.ensure("private/app", "1.0-x86_64_v3", base_visible=True)
    absent = srv.lazy.ensure("private/app", "9.9-x86_64_v3", base_visible=True)
    assert (seen.status, absent.status) == (502, 404) and "no IR image" in absent.message, (seen, absent)
    assert any(a == "Bearer serve-token" for _, _, a in front.seen)
    failed = m.failed._value.get()

    guest = {"Authorization": "Bearer guest-token"}
    for tags in (("1.0-x86_64_v3", "9.9-x86_64_v3"), ("1.0-zen9", "9.9-zen9"), ("1.0-zen4-slim", "9.9-zen4-slim")):
        del front.seen[:]
        # The guest (a user who may not see private/): the same answer for both, that of the
        # upstream to the guest (said plainly for a node tag: no IR image it can see).
        a, b = (get_manifest(srv.address, "private/app", t, guest) for t in tags)
        assert a[0] == b[0] == 404 and a[2].replace(b"1.0", b"9.9") == b[2], (a, b)
        direct = get_manifest(front.address, "private/app", tags[1], guest)
        assert direct[0] == 404 and (a[2] == direct[2] if tags[0] == "1.0-zen9"
                                     else "no IR image private/app:1.0" in oci_error(a[2])["message"]), (a, direct)
        # Anonymous: the upstream's challenge, relayed.
        a, b = (get_manifest(srv.address, "private/app", t) for t in tags)
        assert a[0] == b[0] == 401 and a[2] == b[2] and 'realm="http://' in a[1]["www-authenticate"]
        for method in ("GET", "HEAD"):
            assert get_manifest(srv.address, "private/app", tags[0], guest, method=method)[0] == 404
        # Nothing was looked up with serve's credentials, nothing baked.
        assert not any(a == "Bearer serve-token" or p.startswith("/token") for _, p, a in front.seen), front.seen
    assert m.failed._value.get() == failed and m.started._value.get() == 0

    # alice may see private/: for her the lazy path runs (serve's credentials, the bake that fails)...
    alice = {"Authorization": "Bearer alice-token"}
    status, _, body = get_manifest(srv.address, "private/app", "1.0-x86_64_v3", alice)
    assert status == 502 and "no bake plan" in oci_error(body)["message"], body
    assert m.failed._value.get() == failed + 1
    status, _, body = get_manifest(srv.address, "private/app", "1.0-zen9", alice)  # ...and the hint
    assert status == 404 and "not an archspec target" in oci_error(body)["message"]
    status, _, body = get_manifest(srv.address, "private/app", "9.9-x86_64_v3", alice)
    assert status == 404 and oci_error(body)["code"] == "MANIFEST_UNKNOWN"


def test_the_client_checks_answer_is_relayed_to_get_and_head(serve, front, registry, tmp_path, monkeypatch):
    """An upstream that says 404 for a missing tag before it checks the client's rights (and 403
    for a tag that exists): the client check's 403 is relayed, with an OCI body for a GET."""
    push_small(registry, "private/app", "1.0")
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {front.address: {"auth": base64.b64encode(b"serve:servepass").decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    srv = serve(upstream=front.address)
    lister = {"Authorization": "Bearer lister-token"}
    direct = request(front.address, "HEAD", "/v2/private/app/manifests/1.0", {"Accept": ACCEPT, **lister})
    assert direct[0] == 403
    status, headers, body = get_manifest(srv.address, "private/app", "1.0-x86_64_v3", lister)
    assert status == 403 and oci_error(body)["code"] == "DENIED" and int(headers["content-length"]) == len(body)
    assert headers["x-front"] == "denied"  # the upstream's own headers come along
    status, headers, body = get_manifest(srv.address, "private/app", "1.0-x86_64_v3", lister, method="HEAD")
    assert status == 403 and body == b""
    status, _, body = get_manifest(srv.address, "private/app", "9.9-x86_64_v3", lister)
    assert status == 404 and oci_error(body)["code"] == "MANIFEST_UNKNOWN"
    assert srv.lazy.metrics.failed._value.get() == 0
    assert not any(a == "Bearer serve-token" for _, _, a in front.seen), front.seen


# -- 2. connection cap, header/body/idle time-outs ----------------------------------------

def conn_threads() -> int:
    return sum(t.name == "bakery-serve-conn" for t in threading.enumerate())


def test_half_sent_requests_are_capped_and_cut_in_time(serve, small):
    srv = serve(max_connections=20, header_timeout=1.0, body_timeout=1.0, idle_timeout=1.0, thread_idle=0.5)
    m = srv.lazy.metrics
    assert request(srv.address, "GET", "/v2/")[0] == 200
    wait_for(lambda: srv.active == 0 and conn_threads() == 0, 3, "the first connection was not released")
    held = []
    try:
        for _ in range(60):  # each: a request line and one header, never the blank line
            s = socket.create_connection(hostport(srv.address), timeout=3)
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        t_sent = time.monotonic()
        # The attack does hold threads, one per connection: up to the cap, no more.
        wait_for(lambda: m.connections_refused._value.get() == 40, 3, "connections past the cap were not refused")
        assert srv.active == 20 and conn_threads() == 20
        for s in held[20:]:
            status, headers, body = parse(s.recv(65536))
            assert status == 503 and headers["retry-after"] == "1" and oci_error(body)["code"] == "UNAVAILABLE"
        # A normal client is answered at once meanwhile (503: the cap is full), not left waiting.
        t0 = time.monotonic()
        assert request(srv.address, "GET", "/v2/", timeout=2)[0] == 503
        assert time.monotonic() - t0 < 0.5
        # The held connections are cut at the header time-out (408), and their threads are gone.
        for s in held[:20]:
            answer = b""
            while piece := s.recv(65536):
                answer += piece
            assert parse(answer)[0] == 408
        assert time.monotonic() - t_sent < 2.5
        wait_for(lambda: srv.active == 0 and conn_threads() == 0, 2, "threads were not released")
        assert m.connections_timed_out._value.get() == 20
        t0 = time.monotonic()
        status, _, body = get_manifest(srv.address, "sec/app", "1.0-x86_64_v3")
        assert status == 200 and time.monotonic() - t0 < 0.5
    finally:
        for s in held:
            s.close()


def test_a_request_head_trickling_in_is_cut_at_the_header_timeout(serve):
    """A socket time-out alone is reset by every byte: the header deadline is for the whole head."""
    srv = serve(header_timeout=1.0, body_timeout=1.0)
    got: dict = {}
    with socket.create_connection(hostport(srv.address), timeout=5) as s:

        def read():
            answer = b""
            try:
                while piece := s.recv(65536):
                    answer += piece
            except OSError:
                pass
            got.update(answer=answer, at=time.monotonic())

        reader = threading.Thread(target=read)
        t0 = time.monotonic()
        s.sendall(b"GET /v2/ HTTP/1.1\r\nX-Slow: ")
        reader.start()
        for _ in range(50):  # one byte every 0.1 s (within the 1 s socket time-out): 5 s of headers
            if not reader.is_alive():
                break
            try:
                s.sendall(b"x")
            except OSError:
                break
            time.sleep(0.1)
        reader.join(5)
    assert 0.9 <= got["at"] - t0 < 2.5, got["at"] - t0
    assert got["answer"].startswith(b"HTTP/1.1 408 "), got


def test_a_stalled_body_and_an_idle_keepalive_connection_are_closed(serve, small):
    srv = serve(header_timeout=1.0, body_timeout=1.0, idle_timeout=1.0)
    with socket.create_connection(hostport(srv.address), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(b"PUT /v2/sec/app/blobs/uploads/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        answer = b""
        while piece := s.recv(65536):
            answer += piece
        took = time.monotonic() - t0
    status, _, body = parse(answer)
    assert status == 408 and "stalled" in oci_error(body)["message"] and 0.9 <= took < 3, (answer, took)
    # Keep-alive: a second request on the connection is served; then idle, it is closed after 1 s.
    with socket.create_connection(hostport(srv.address), timeout=5) as s:
        get = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(2):
            s.sendall(get)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        assert s.recv(65536) == b""
        assert 0.9 <= time.monotonic() - t0 < 2.5
    wait_for(lambda: srv.active == 0, 2, "threads were not released")


# -- 3. malformed requests: 400s, never tracebacks, never forwarded ---------------------------

def test_malformed_framing_is_400_not_a_traceback(serve, small, capfd):
    srv = serve()
    assert "\xb2".isdigit()  # what the old check took for a number (and int() then failed on)
    put = "PUT /v2/sec/app/blobs/uploads/x HTTP/1.1\r\nHost: x\r\n"
    cases = {
        "Content-Length: ² (a latin-1 digit)": (put + "Content-Length: \xb2\r\n\r\n").encode("latin-1"),
        "Content-Length: 1_0": (put + "Content-Length: 1_0\r\n\r\n").encode(),
        "two Content-Lengths": (put + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab").encode(),
        "Content-Length with Transfer-Encoding": (put + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                  "0\r\n\r\n").encode(),
        "Transfer-Encoding: gzip, chunked": (put + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").encode(),
        "bad chunk size": (put + "Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n").encode(),
        "chunk size 0x5": (put + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n").encode(),
        "chunk size ²": (put + "Transfer-Encoding: chunked\r\n\r\n\xb2\r\nab\r\n0\r\n\r\n").encode("latin-1"),
        "a bare CR in a header": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n",
        "a NUL in a header": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        "a space in a header name": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX A: 1\r\n\r\n",
        "a GET with a body": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",
        "a bad request line": b"GET  /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for what, data in cases.items():
        status, headers, body = parse(raw(srv.address, data))
        assert status == 400 and oci_error(body) and headers.get("connection") == "close", (what, status, body)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


TRAVERSALS = ["/v2/../admin", "/v2/%2e%2e/admin", "/v2/%2E%2e/x", "/v2/sec/app/../../x", "/v2/./_catalog",
              "/v2/sec/.%2e/x", "/v2/sec%2fapp/tags/list", "/v2/sec%2Fapp/tags/list", "/v2/sec\\app/tags/list",
              "/v2/sec%5capp/tags/list", "/v2/sec%00/tags/list", "/v2/sec%0d%0aX:%20y/tags/list",
              "/v2//sec/app/tags/list", "/v2/sec/app%/tags/list", "/v2/sec\x01app/tags/list",
              "/v2/sec\x7fapp/tags/list", "/v2/sec\xe9/tags/list", "http://x/v2/../admin"]


def test_traversal_and_control_paths_are_400_and_never_forwarded(serve, front, small):
    srv = serve(upstream=front.address)
    # The control: a plain path is forwarded, as it is.
    status, _, body = parse(raw(srv.address, b"GET /v2/sec/app/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert status == 200 and "1.0" in json.loads(body)["tags"]
    assert ("GET", "/v2/sec/app/tags/list", None) in front.seen
    before = len(front.seen)
    for path in TRAVERSALS:
        answer = raw(srv.address, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
        status, _, body = parse(answer)
        assert status == 400 and "refused request target" in oci_error(body)["message"], (path, answer[:300])
    assert front.seen[before:] == []


def test_credentials_in_the_upstream_url_are_refused(tmp_path):
    with pytest.raises(BakeryError, match="credentials in the URL are refused") as e:
        servemod.make_server(upstream="http://user:s3cret@127.0.0.1:5000", listen="127.0.0.1:0",
                             bake_fn=lambda f, l: FAKE)
    assert "s3cret" not in str(e.value) + (e.value.hint or "") and "\n" not in e.value.message
    for url in ("http://user:s3cret@127.0.0.1:5000", "user:s3cret@127.0.0.1:5000", "https://tok3n@registry.example"):
        cp = subprocess.run([sys.executable, "-m", "bakery", "serve", "--upstream", url, "--listen", "127.0.0.1:0",
                             "--engine", "buildah"], capture_output=True, text=True, timeout=60, check=False)
        out = cp.stdout + cp.stderr
        assert cp.returncode != 0 and "credentials in the URL are refused" in out, out
        assert "s3cret" not in out and "tok3n" not in out and "Traceback" not in out, out
        assert cp.stderr.strip().splitlines()[0].count("credentials") == 1


# -- 7. latency: upstream connections and handler threads are reused ---------------------------

def test_fresh_client_connections_share_pooled_upstream_connections(serve, front, small, registry):
    srv = serve(upstream=front.address)
    for _ in range(20):  # each on a new client connection, as curl or a node's first pull
        status, headers, _ = get_manifest(srv.address, "sec/app", "1.0-x86_64_v3", {"Connection": "close"})
        assert status == 200 and headers["docker-content-digest"] == small
    assert len([1 for _, p, _ in front.seen if p.endswith("/manifests/1.0-x86_64_v3")]) == 20
    assert front.connections == 1 and conn_threads() <= 2, (front.connections, conn_threads())
    assert srv.lazy.metrics.cache_hits._value.get() == 20


def test_an_answer_broken_off_never_returns_its_connection_to_the_pool(serve, registry):
    """A client that leaves mid-blob: the rest of the blob must not reach the next client."""
    blob = os.urandom(32 << 20)  # more than loopback's socket buffers hold: the relay is cut, not finished
    digest = oci.sha256(blob)
    with tempfile.NamedTemporaryFile() as f:
        f.write(blob)
        f.flush()
        oci.Registry(registry).push_blob("sec/blob", Path(f.name), "application/octet-stream")
    srv = serve(pool_size=1)
    for _ in range(3):
        with socket.create_connection(hostport(srv.address), timeout=5) as s:
            s.sendall(f"GET /v2/sec/blob/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(1024).startswith(b"HTTP/1.1 200 ")
        wait_for(lambda: srv.active == 0, 5, "the broken-off connection was not released")
        assert srv.pool.idle == []  # its upstream connection, the blob half read, was closed
        status, _, body = request(srv.address, "GET", f"/v2/sec/blob/blobs/{digest}")
        assert status == 200 and oci.sha256(body) == digest
        status, _, body = request(srv.address, "GET", "/v2/sec/blob/tags/list")
        assert status in (200, 404) and json.loads(body)


# -- 6. the default policy is said to be open ---------------------------------------------------

def test_the_open_default_policy_is_said_so(tmp_path):
    from bakery.cli import serve as cli

    assert "ANY CLIENT" in cli.DESCRIPTION and "bakery/data/registry/lazy-policy.yaml" in cli.DESCRIPTION
    readme = (REPO / "registry" / "README.md").read_text()
    assert "any client" in readme.lower() and "--policy bakery/data/registry/lazy-policy.yaml" in readme
    p = Policy.load(REPO / "bakery" / "data" / "registry" / "lazy-policy.yaml")
    assert all("*" not in r.targets for r in p.rules) and all("*" not in r.repositories for r in p.rules)
    # The service says so at start, on stderr, when it runs without --policy.
    events = []
    for policy in ([], ["--policy", "bakery/data/registry/lazy-policy.yaml"]):
        proc = subprocess.Popen([sys.executable, "-m", "bakery", "serve", "--upstream", "http://127.0.0.1:9",
                                 "--listen", "127.0.0.1:0", "--engine", "buildah", *policy],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                cwd=REPO)
        try:
            recs = []
            for line in proc.stderr:
                if line.startswith("{"):
                    recs.append(json.loads(line))
                    if recs[-1]["event"] == "listening":
                        break
        finally:
            proc.terminate()
            proc.wait(10)
        events.append(recs)
    warning = [r for r in events[0] if r["event"] == "warning"]
    assert len(warning) == 1 and "no --policy" in warning[0]["message"], events[0]
    assert [r["event"] for r in events[1]] == ["listening"] and events[1][0]["policy"] == "bakery/data/registry/lazy-policy.yaml"


def test_the_policy_on_its_own(tmp_path):
    """serve/policy.py decides without a service, a registry or an image (the service's answers
    to what it refuses: test_serve.py::test_policy_refuses_repositories_and_targets)."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("rules:\n  - repositories: [pi]\n    targets: [\"x86_64_v3+\", nehalem]\n    slim: false\n")
    p = Policy.load(policy_file)
    allowed = lambda repo, tag: p.allows(repo, parse_node_tag(tag)) is None  # noqa: E731
    assert allowed("pi", "1.0-icelake") and allowed("pi", "1.0-zen4") and allowed("pi", "1.0-x86_64_v3")
    assert allowed("pi", "1.0-nehalem") and not allowed("pi", "1.0-westmere") and not allowed("app", "1.0-zen4")
    assert not allowed("pi", "1.0-icelake-slim") and not allowed("pi", "1.0-core2")
    assert Policy.default().allows("any/repo", parse_node_tag("2-a64fx")) is None
    with pytest.raises(BakeryError, match="not an archspec target"):
        Policy.from_dict({"rules": [{"repositories": ["*"], "targets": ["zen9"]}]})
    assert split_tag("1.0-rc1-x86_64_v3-slim") == ("1.0-rc1", "x86_64_v3", True)
    assert parse_node_tag("1.0-beta") is None and parse_node_tag("latest") is None
