"""``bakery serve``: an OCI distribution front for a real registry, with lazy node tags.

Every request under ``/v2/`` is passed to the upstream registry as it is:
``Authorization`` goes up and ``WWW-Authenticate`` comes down untouched (the
upstream's auth server stays in charge), blobs and uploads are streamed in
64 KiB pieces in both directions (never held whole), and ``Location``/``Link``
headers that name the upstream are rewritten to this service's own address.

The one thing added: a ``GET``/``HEAD`` of ``/v2/<repo>/manifests/<tag>-<target>``
that the upstream answers 404 bakes that node tag from the IR image
``<repo>:<tag>`` (see :mod:`bakery.serve.lazy`), then answers with the upstream's
manifest. ``/metrics`` (Prometheus) and ``/healthz`` are the service's own.

Why stdlib ``ThreadingHTTPServer`` and a small HTTP/1.1 client of our own
(:mod:`bakery.serve.http11`): one thread per client connection is what a
registry front needs here. What it does per request is blocking I/O (relaying a
socket to a socket) or waiting on a bake; threads keep both simple and a slow
blob transfer or a long wait never stalls other clients, with no event loop to
bridge to the blocking bakes and no third-party server. Upstream connections are
pooled across client connections, so a cache hit costs one loopback round trip
more than a direct pull and no connection set-up, even for a client that
connects anew for each request. Small answers go out in one ``sendall`` and
``TCP_NODELAY`` is on both sides. ``bench/serve_latency.py`` measures the result.

Clients are untrusted. Hence: at most ``max_connections`` client connections
(more are answered 503 at once); a request's line and headers must be in within
``header_timeout`` of its first byte (a connection's first request: of its
accept), a body or a client reading an answer that makes no progress for
``body_timeout`` is cut, and a keep-alive connection idle for ``idle_timeout``
is closed. Request framing is parsed strictly (ASCII digits, one chunked coding,
no control characters in headers) and request targets with dot segments,
percent-encoded dots, slashes or backslashes, or control characters are
refused, never forwarded: each with a 400 and an OCI error body. And the
service's own registry credentials are used for a node tag only once the
client, with its own, was shown the IR image (see ``Handler._manifest``).
"""

from __future__ import annotations

import collections
import http.client
import io
import json
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import prometheus_client as prom

from bakery.errors import BakeryError
from bakery.oci import ACCEPT
from bakery.serve.http11 import (
    DIGITS,
    POOL_SIZE,
    TOKEN,
    BadRequest,
    Body,
    Chunked,
    ClientGone,
    FromClient,
    Headers,
    Length,
    Response,
    Upstream,
    UpstreamConn,
    UpstreamPool,
    copy_body,
    read_headers,
    request_framing,
)
from bakery.serve.lazy import BAKE_TIMEOUT, Lazy, Outcome
from bakery.serve.metrics import JsonLog
from bakery.serve.policy import parse_node_tag, split_tag

SMALL = 256 << 10          # bodies up to this size are read whole and sent with the headers
MAX_CONNECTIONS = 128      # client connections at once; more are answered 503 at once
HEADER_TIMEOUT = 10.0      # a request line + headers must be in within this (slow or half-sent requests)
BODY_TIMEOUT = 30.0        # a request body, or a client reading an answer, with no progress this long is cut
IDLE_TIMEOUT = 30.0        # an idle keep-alive client connection is closed after this
THREAD_IDLE = 30.0         # a handler thread without a connection for this long ends


HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "proxy-connection", "host", "content-length",
                        "expect"})
MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)/manifests/(?P<ref>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")
REASONS = {s.value: s.phrase for s in HTTPStatus}

_PATH_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/%-]*")  # RFC 3986 pchar and "/": no backslash, no quote ...
_PCT = re.compile(r"%([0-9A-Fa-f]{2})?")


class UpstreamDown(Exception):
    """The upstream is unreachable or broke off: a 502 to the client."""


def bad_target(target: str) -> str | None:
    """Why a request target is refused, or None. The upstream, or a proxy or router before it,
    may normalise ``/v2/../admin`` or ``%2e%2e`` into a path this service never saw: such targets
    are not forwarded. OCI names and references need none of it."""
    path, _, _query = target.partition("?")
    if any(not "\x21" <= c <= "\x7e" for c in target):
        return "a space, control or non-ASCII character"
    if not path.startswith("/"):
        return "not an absolute path"
    if not _PATH_CHARS.fullmatch(path):
        return "a character a path may not have (a backslash, a quote ...)"
    for m in _PCT.finditer(path):
        if m[1] is None:
            return "a malformed percent-escape"
        c = chr(int(m[1], 16))
        if c in "./\\%" or not "\x21" <= c <= "\x7e":
            return f"a percent-encoded {c!r}"
    segments = path.split("/")[1:]
    if any(seg in (".", "..") for seg in segments):
        return "a dot segment"
    if "" in segments[:-1]:
        return "an empty path segment"
    return None


# -- the handler -------------------------------------------------------------------

def _canned(status: str, message: str, extra: str = "") -> bytes:
    """A whole answer sent without a handler (a refused or a timed-out connection)."""
    body = Outcome(0, "UNAVAILABLE", message).body()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Connection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


TIMED_OUT = _canned("408 Request Timeout", "the request line and headers were not sent in time")
BUSY = _canned("503 Service Unavailable: too many connections", "too many connections", "Retry-After: 1\r\n")
ERROR_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "MANIFEST_UNKNOWN", 408: "UNKNOWN", 429: "TOOMANYREQUESTS",
               503: "UNAVAILABLE"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bakery-serve"
    sys_version = ""
    server: Server
    rfile: io.BufferedReader   # StreamRequestHandler's makefile("rb", -1): it peeks between requests
    _chunked: bool
    _length: int | None

    # -- connection life --

    def setup(self) -> None:
        self.accepted = time.monotonic()
        super().setup()
        self.connection.settimeout(self.server.body_timeout)  # every client read or write: progress within this, or cut
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.first, self.reaped = True, False
        self.request_headers, self.command = Headers([]), ""   # for answers to requests that do not parse
        self._chunked, self._length = False, None    # the request body's framing (http11.request_framing)
        self._taken: list[UpstreamConn] = []             # upstream connections out of the pool, this request

    def log_message(self, format, *args):  # no access log: bakes are logged as JSON lines
        pass

    def handle_one_request(self):
        srv = self.server
        self.close_connection = True
        try:
            if self.first:
                self.first = False
                deadline = self.accepted + srv.header_timeout
            else:
                # Between requests: an idle keep-alive connection has idle_timeout to start its next one.
                self.connection.settimeout(srv.idle_timeout)
                try:
                    if not self.rfile.peek(1):
                        return
                except OSError:
                    return
                self.connection.settimeout(srv.body_timeout)
                deadline = time.monotonic() + srv.header_timeout
            # Its line and headers then have until the deadline, however slowly they trickle in.
            srv.reaper.arm(self, deadline)
            try:
                ok = self._read_request()
            except TimeoutError:  # no byte for body_timeout, before the reaper's deadline
                srv.reaper.disarm(self)
                if not self.reaped:
                    srv.lazy.metrics.connections_timed_out.inc()
                    self.connection.send(TIMED_OUT, socket.MSG_DONTWAIT)
                return
            finally:
                srv.reaper.disarm(self)
            if ok and not self.reaped:
                mname = "do_" + self.command
                if not hasattr(self, mname):
                    return self._error(501, f"the method {self.command[:20]} is not supported")
                getattr(self, mname)()
        except (OSError, ClientGone):
            self.close_connection = True
        finally:
            for conn in self._taken:  # left by an answer that broke off: never back to the pool
                conn.close()
            self._taken.clear()
            if self.reaped:
                self.close_connection = True

    def _read_request(self) -> bool:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline or self.reaped:
            return False
        if len(self.raw_requestline) > 65536:
            self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
            self._error(414, "the request line is too long")
            return False
        return self.parse_request()

    def parse_request(self) -> bool:
        """``BaseHTTPRequestHandler.parse_request`` with the fast header reader and strict framing."""
        self.command = ""
        self.request_version = self.default_request_version
        self.close_connection = True
        if not self.raw_requestline.endswith(b"\n"):
            return False  # the client closed, or the reaper cut it, in the middle of the line
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split(" ")
        if len(words) != 3:
            return self._error(400, f"bad request line {self.requestline[:100]!r}")
        command, target, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            return self._error(505, f"unsupported HTTP version {version[:20]!r}")
        self.request_version = version
        if not TOKEN.fullmatch(command):
            return self._error(400, f"bad method {command[:20]!r}")
        self.command, self.path = command, target
        try:
            self.request_headers = read_headers(self.rfile)
        except (http.client.HTTPException, ValueError) as e:
            if self.reaped:
                return False
            return self._error(431 if isinstance(e, http.client.LineTooLong) else 400, str(e)[:200])
        if self.reaped:
            return False
        self._chunked, self._length = False, None
        try:
            self._chunked, self._length = request_framing(self.request_headers, version)
        except BadRequest as e:
            return self._error(400, str(e))
        conntype = (self.request_headers.get("Connection") or "").lower()
        self.close_connection = (version == "HTTP/1.0" and conntype != "keep-alive") or conntype == "close"
        if (self.request_headers.get("Expect") or "").lower() == "100-continue" and version == "HTTP/1.1":
            if not self.handle_expect_100():
                return False
        return True

    def send_error(self, code, message=None, explain=None):
        """``http.server``'s own error answers, as OCI error bodies."""
        self._error(int(code), message or REASONS.get(int(code), "error"))

    def _error(self, status: int, message: str) -> bool:
        """A refusal of a request that is the client's fault; the connection is closed. False (for parse_request)."""
        self.close_connection = True
        self._oci_error(Outcome(status, ERROR_CODES.get(status, "UNSUPPORTED"), message))
        return False

    # -- dispatch --

    def do_GET(self):
        self.arrived = time.monotonic()
        target = self.path
        why = None
        if target.startswith(("http://", "https://")):  # absolute-form request target
            try:
                u = urlsplit(target)
                target = u.path + (f"?{u.query}" if u.query else "")
            except ValueError:
                why = "not a URL"
        why = why or bad_target(target)
        if why:
            return self._error(400, f"refused request target ({why}): {target[:100]!r}")
        path = target
        p = path.split("?", 1)[0]
        if self.command in ("GET", "HEAD") and (self._chunked or self._length):
            return self._error(400, f"a {self.command} request with a body")
        if p == "/metrics" and self.command in ("GET", "HEAD"):
            return self._plain(200, self.server.lazy.metrics.text(), prom.CONTENT_TYPE_LATEST)
        if p == "/healthz" and self.command in ("GET", "HEAD"):
            return self._health()
        if not (p == "/v2" or p.startswith("/v2/")):
            return self._oci_error(Outcome(404, "UNSUPPORTED", f"{p[:200]} is not an OCI distribution path"))
        if self.command in ("GET", "HEAD"):
            m = MANIFEST_PATH.match(p)
            if m:
                return self._manifest(path, m["repo"], m["ref"])
        self._pass(path)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _pass(self, path: str) -> None:
        """The request to the upstream as it is, and its answer back (or why not: 502, 400, 408)."""
        try:
            resp = self._forward(path)
        except (UpstreamDown, BadRequest, ClientGone) as e:
            return self._fail(e)
        self._relay(resp)

    # -- the one path that is not plain passthrough --

    def _manifest(self, path: str, repo: str, ref: str):
        lazy = self.server.lazy
        try:
            resp = self._forward(path)
        except (UpstreamDown, BadRequest, ClientGone) as e:
            return self._fail(e)
        parts = split_tag(ref) if resp.status == 404 else None
        if parts is None or parts[0] == "sha256":  # not <base>-<something>; sha256-<hex>: referrers, cosign
            if resp.status == 200 and parse_node_tag(ref):
                lazy.metrics.cache_hits.inc()
            return self._relay(resp)
        try:
            body = resp.read()  # a small error document: kept, in case the 404 stands
        except (OSError, http.client.HTTPException) as e:
            self._drop(resp)
            return self._fail(UpstreamDown(f"the upstream {self.server.upstream.base} broke off: {e}"))
        self._done(resp)
        # The service's own credentials may see tags this client may not: whatever they would tell
        # (the tag exists, a bake starts, a hint) is only for a client the upstream shows the IR image.
        try:
            probe = self._exchange("HEAD", f"/v2/{repo}/manifests/{parts[0]}", self._client_headers(ACCEPT))
        except (UpstreamDown, BadRequest, ClientGone) as e:
            return self._fail(e)
        self._done(probe)
        if probe.status != 200:
            if probe.status in (401, 403, 429) or probe.status >= 500:  # the client's auth challenge, or trouble
                return self._relay_head(probe)
            if probe.status == 404 and parse_node_tag(ref):  # what the client was told itself, said plainly
                lazy.metrics.rejected.labels("invalid").inc()
                return self._oci_error(Outcome(404, "MANIFEST_UNKNOWN", f"{repo}:{ref} cannot be baked: there is no "
                                               f"IR image {repo}:{parts[0]} (the upstream answered 404 to its HEAD "
                                               f"with this request's credentials)"))
            return self._send(404, resp.headers.items(), body, reason=resp.reason)  # the 404 as it was
        outcome = lazy.ensure(repo, ref, self.arrived, base_visible=True)
        if outcome is None:
            return self._send(404, resp.headers.items(), body, reason=resp.reason)
        if not outcome.ok:
            return self._oci_error(outcome)
        self._pass(path)

    def _relay_head(self, resp: Response):
        """The answer to a HEAD sent for the client (its status and headers, ``WWW-Authenticate``
        among them), to a GET too: with an OCI error body of its own, the upstream sent none."""
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in ("content-type", "content-length")]
        headers.append(("Content-Type", "application/json"))
        out = Outcome(resp.status, ERROR_CODES.get(resp.status, "UNKNOWN"), resp.reason or REASONS.get(resp.status, ""))
        self._send(resp.status, headers, out.body(), reason=resp.reason)

    # -- upstream round trips --

    def _client_headers(self, accept: str | None = None) -> list[tuple[str, str]]:
        """The client's end-to-end headers (its ``Authorization`` among them), for the upstream."""
        drop = HOP_BY_HOP | ({"accept"} if accept else set())
        headers = [(k, v) for k, v in self.request_headers.items() if k.lower() not in drop]
        if accept:
            headers.append(("Accept", accept))
        headers.append(("Host", self.server.upstream.netloc))
        return headers

    def _forward(self, path: str) -> Response:
        """The client's request, as it is, to the upstream."""
        headers = self._client_headers()
        body: bytes | Body | None = None
        chunked = False
        if self._chunked:
            body, chunked = Chunked(FromClient(self.rfile)), True
            headers.append(("Transfer-Encoding", "chunked"))
        elif self._length is not None:
            headers.append(("Content-Length", str(self._length)))
            body = Length(FromClient(self.rfile), self._length) if self._length else b""
        self._chunked, self._length = False, None  # a body is read once: a second round trip sends none
        return self._exchange(self.command, path, headers, body, chunked)

    def _exchange(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | Body | None = None,
                  chunked: bool = False) -> Response:
        up = self.server.upstream
        replayable = body is None or isinstance(body, bytes)
        for attempt in (0, 1):
            conn = self.server.pool.get() if attempt == 0 else UpstreamConn(up)
            self._taken.append(conn)
            reused = conn.sock is not None
            try:
                conn.open()
                conn.send(method, path, headers, body, chunked)
                return conn.response(method)
            except (ClientGone, BadRequest):
                self._close(conn)  # a body half sent: the upstream connection is done for
                self.close_connection = True
                raise
            except ConnectionError as e:
                self._close(conn)
                if isinstance(e, (ConnectionResetError, BrokenPipeError)) and reused and replayable:
                    continue  # a pooled connection the upstream closed meanwhile: once more on a fresh one
                self.close_connection = True
                raise UpstreamDown(f"the upstream {up.base} broke off the connection: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                self._close(conn)
                if not replayable:
                    self.close_connection = True
                raise UpstreamDown(f"the upstream {up.base} is unreachable: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
        raise AssertionError("unreachable")

    def _close(self, conn: UpstreamConn) -> None:
        if conn in self._taken:
            self._taken.remove(conn)
        conn.close()

    def _done(self, resp: Response) -> None:
        """After a response: its connection back to the pool only if read whole and reusable."""
        conn = resp.conn
        if conn not in self._taken:
            return  # given back already
        self._taken.remove(conn)
        if resp.will_close or not resp.done:
            conn.close()
        else:
            self.server.pool.put(conn)

    def _drop(self, resp: Response) -> None:
        self._close(resp.conn)

    def _rewrite(self, value: str) -> str:
        up = self.server.upstream
        mine = f"http://{self.request_headers.get('Host') or self.server.address}"
        for prefix in (f"http://{up.netloc}", f"https://{up.netloc}"):
            if value.startswith(prefix):
                return mine + value[len(prefix):]
            value = value.replace(f"<{prefix}/", f"<{mine}/")
        return value

    def _relay(self, resp: Response):
        headers = []
        for k, v in resp.headers.items():
            lk = k.lower()
            if lk in HOP_BY_HOP:
                continue
            if lk in ("location", "link"):
                v = self._rewrite(v)
            headers.append((k, v))
        try:
            # A whole answer in hand: its upstream connection goes back to the pool before the client
            # is answered, so the client's next request (on any connection) finds it there.
            if resp.mode == "none":
                length = resp.headers.get("Content-Length")
                if length is not None and resp.status not in (204, 304):
                    headers.append(("Content-Length", length))
                self._done(resp)
                self._write_head(resp.status, resp.reason, headers)
            elif resp.length is not None and resp.length <= SMALL:
                body = resp.read()
                self._done(resp)
                self._send(resp.status, headers, body, reason=resp.reason)
            elif resp.length is not None:
                headers.append(("Content-Length", str(resp.length)))
                self._write_head(resp.status, resp.reason, headers)
                copy_body(resp.body, self.wfile.write)
            else:
                chunked = self.request_version == "HTTP/1.1"
                if chunked:
                    headers.append(("Transfer-Encoding", "chunked"))
                else:
                    self.close_connection = True
                self._write_head(resp.status, resp.reason, headers)
                copy_body(resp.body, self.wfile.write, chunked)
        except (OSError, http.client.HTTPException):
            # The client or the upstream went away mid-body: neither connection can be reused.
            self.close_connection = True
        finally:
            self._done(resp)

    # -- writing answers --

    def _write_head(self, status: int, reason: str | None, headers, extra: bytes = b""):
        lines = [f"HTTP/1.1 {status} {reason or REASONS.get(status, '')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + extra)

    def _send(self, status: int, headers, body: bytes, reason: str | None = None):
        headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        headers.append(("Content-Length", str(len(body))))
        self._write_head(status, reason, headers, b"" if self.command == "HEAD" else body)

    def _plain(self, status: int, body: bytes, content_type: str):
        self._send(status, [("Content-Type", content_type)], body)

    def _oci_error(self, outcome: Outcome):
        headers = [("Content-Type", "application/json"), ("Docker-Distribution-API-Version", "registry/2.0")]
        if outcome.retry_after:
            headers.append(("Retry-After", str(outcome.retry_after)))
        if self._chunked or self._length:
            self.close_connection = True  # an unread request body
        reason = None
        if outcome.status >= 500:
            # containers/image (skopeo, buildah, podman) shows no body of a 5xx answer, only its
            # status line: the reason goes there too, on one line.
            text = " ".join(outcome.message.split()).encode("latin-1", "replace").decode("latin-1")
            reason = f"{REASONS.get(outcome.status, 'Error')}: {text[:300]}"
        self._send(outcome.status, headers, outcome.body(), reason=reason)

    def _fail(self, e: Exception):
        if isinstance(e, BadRequest):
            return self._error(400, str(e))
        if isinstance(e, ClientGone):  # best effort: it may be gone for good
            return self._error(408, str(e))
        self.server.log("upstream", outcome="unreachable", error=str(e), path=self.path[:200])
        self._oci_error(Outcome(502, "UNAVAILABLE", str(e), retry_after=5))

    def _health(self):
        ok, detail = self.server.check_upstream()
        body = json.dumps({"status": "ok" if ok else "unhealthy", "upstream": self.server.upstream.base,
                           "detail": detail}).encode()
        self._plain(200 if ok else 503, body + b"\n", "application/json")


class Reaper:
    """Cuts client connections whose request head is not in by its deadline: a slow or half-sent
    request holds a thread for ``header_timeout`` at most, however it trickles in (a socket
    timeout alone is reset by every byte)."""

    def __init__(self, tick: float, metrics):
        self.tick, self.metrics = tick, metrics
        self.lock = threading.Lock()
        self.armed: dict[Handler, float] = {}
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name="bakery-serve-reaper", daemon=True).start()

    def arm(self, handler: Handler, deadline: float) -> None:
        with self.lock:
            self.armed[handler] = deadline

    def disarm(self, handler: Handler) -> None:
        """After this the reaper leaves the connection alone (the handler may close it)."""
        with self.lock:
            self.armed.pop(handler, None)

    def _run(self) -> None:
        while not self.stopped.wait(self.tick):
            now = time.monotonic()
            with self.lock:
                for h in [h for h, t in self.armed.items() if t <= now]:
                    del self.armed[h]
                    h.reaped = True
                    self.metrics.connections_timed_out.inc()
                    try:
                        h.connection.send(TIMED_OUT, socket.MSG_DONTWAIT)
                    except OSError:
                        pass
                    try:
                        h.connection.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns
                    except OSError:
                        pass

    def stop(self) -> None:
        self.stopped.set()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False     # server_close does not wait for connections (their threads are ours)
    request_queue_size = 256   # bursts of pulls (a job starting on many nodes) are not refused at connect

    def __init__(self, listen: tuple[str, int], upstream: Upstream, lazy: Lazy, log: JsonLog | None = None, *,
                 max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                 pool_size: int = POOL_SIZE, thread_idle: float = THREAD_IDLE):
        if max_connections < 1 or pool_size < 0 or min(header_timeout, body_timeout, idle_timeout) <= 0:
            raise BakeryError("--max-connections must be >= 1 and the client timeouts > 0")
        self.upstream, self.lazy = upstream, lazy
        self.log = log or lazy.log
        self.max_connections = max_connections
        self.header_timeout, self.body_timeout, self.idle_timeout = header_timeout, body_timeout, idle_timeout
        self.pool = UpstreamPool(upstream, pool_size)
        self.active = 0
        self._active_lock = threading.Lock()
        self.thread_idle = thread_idle
        self._cv = threading.Condition()
        self._pending: collections.deque = collections.deque()   # accepted, waiting for a handler thread
        self._idle = 0
        self._closing = False
        lazy.metrics.connections.set_function(lambda: self.active)
        super().__init__(listen, Handler)
        self.reaper = Reaper(min(0.5, header_timeout / 5), lazy.metrics)
        host, port = self.server_address[:2]
        assert isinstance(host, str)
        self.address = f"{host}:{port}"

    # -- the connection cap --

    def process_request(self, request, client_address):
        with self._active_lock:
            full = self.active >= self.max_connections
            if not full:
                self.active += 1
        if full:
            self.lazy.metrics.connections_refused.inc()
            return self._turn_away(request)
        with self._cv:
            self._pending.append((request, client_address))
            if self._idle >= len(self._pending):
                self._cv.notify()
                return
        try:
            threading.Thread(target=self._handler_thread, name="bakery-serve-conn", daemon=True).start()
        except RuntimeError:  # no thread to be had: this connection is turned away, if still pending
            with self._cv:
                if (request, client_address) not in self._pending:
                    return
                self._pending.remove((request, client_address))
            self._release()
            self._turn_away(request)

    # -- handler threads, kept for reuse: a new thread per connection costs its start-up
    # latency on every fresh connection (a node's first pull, each curl) --

    def _handler_thread(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                while not self._pending and not self._closing:
                    if not self._cv.wait(self.thread_idle):
                        break
                self._idle -= 1
                if not self._pending:
                    return  # idle for thread_idle seconds (or closing): one thread fewer
                request, client_address = self._pending.popleft()
            try:
                self.process_request_thread(request, client_address)
            finally:
                self._release()

    def _release(self) -> None:
        with self._active_lock:
            self.active -= 1

    def _turn_away(self, sock: socket.socket) -> None:
        """503 without a thread: a non-blocking send of a canned answer, then close."""
        try:
            sock.setblocking(False)
            sock.send(BUSY)
            sock.recv(65536)  # what the client sent already: unread, it would make close() a reset
        except OSError:
            pass
        self.shutdown_request(sock)

    def handle_error(self, request, client_address):
        """No traceback on stderr for a connection: one JSON line, unless the client just went away."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (OSError, ClientGone)):
            self.log("internal_error", error=repr(exc)[:300])

    def server_close(self):
        super().server_close()
        with self._cv:
            self._closing = True
            pending, self._pending = list(self._pending), collections.deque()
            self._cv.notify_all()
        for request, _ in pending:
            self._release()
            self.shutdown_request(request)
        self.reaper.stop()
        self.pool.close()

    def check_upstream(self) -> tuple[bool, str]:
        conn = UpstreamConn(self.upstream)
        try:
            conn.open().settimeout(5)
            conn.send("GET", "/v2/", [("Host", self.upstream.netloc)])
            r = conn.response("GET")
            r.read()
            return r.status in (200, 401), f"GET /v2/: HTTP {r.status}"
        except (OSError, http.client.HTTPException) as e:
            return False, f"GET /v2/: {e}"
        finally:
            conn.close()


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not DIGITS.fullmatch(port) or int(port) > 65535:
        raise BakeryError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5001")
    return host.strip("[]") or "127.0.0.1", int(port)


def make_server(*, upstream: str, listen: str, engine=None, bake_fn=None, policy=None, workers: int = 1,
                queue_size: int = 16, deadline: float = 300.0, backoff: float = 30.0,
                bake_timeout: float = BAKE_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                idle_timeout: float = IDLE_TIMEOUT, pool_size: int = POOL_SIZE, thread_idle: float = THREAD_IDLE,
                tls_verify: bool | None = None, log: JsonLog | None = None) -> Server:
    """A ready service (not yet serving: call ``serve_forever``)."""
    from bakery import oci
    from bakery.serve.lazy import bake_with_engine

    up = Upstream(upstream)
    up.tls_verify = oci.tls_default(up.netloc, tls_verify)
    if bake_fn is None:
        if engine is None:
            from bakery import engines as enginemod

            engine = enginemod.get()
        bake_fn = bake_with_engine(engine)
    log = log or JsonLog()
    lazy = Lazy(up.netloc, bake_fn, policy=policy, workers=workers, queue_size=queue_size, deadline=deadline,
                backoff=backoff, bake_timeout=bake_timeout, tls_verify=up.tls_verify, log=log)
    try:
        return Server(parse_listen(listen), up, lazy, log, max_connections=max_connections,
                      header_timeout=header_timeout, body_timeout=body_timeout, idle_timeout=idle_timeout,
                      pool_size=pool_size, thread_idle=thread_idle)
    except OSError as e:
        raise BakeryError(f"cannot listen on {listen}: {e.strerror or e}") from None


def serve_in_thread(server: Server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name="bakery-serve")
    t.start()
    return t
