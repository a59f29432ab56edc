"""``bakery serve``: an OCI distribution front for a real registry, with lazy node tags.

Every request under ``/v2/`` is passed to the upstream registry as it is:
``Authorization`` goes up and ``WWW-Authenticate`` comes down untouched (the
upstream's auth server stays in charge), blobs and uploads are streamed in
64 KiB pieces in both directions (never held whole), and ``Location``/``Link``
headers that name the upstream are rewritten to this service's own address.

The one thing added: a ``GET``/``HEAD`` of ``/v2/<repo>/manifests/<tag>-<target>``
that the upstream answers 404 bakes that node tag from the IR image
``<repo>:<tag>`` (see :mod:`bakery.serve_lazy`), then answers with the upstream's
manifest. ``/metrics`` (Prometheus) and ``/healthz`` are the service's own.

Why stdlib ``ThreadingHTTPServer`` and a small HTTP/1.1 client of our own:
one thread per client connection is what a registry front needs here. What it
does per request is blocking I/O (relaying a socket to a socket) or waiting on
a bake; threads keep both simple and a slow blob transfer or a long wait never
stalls other clients, with no event loop to bridge to the blocking bakes and no
third-party server. Each client connection keeps its own keep-alive connection
to the upstream, so a cache hit costs one loopback round trip more than a
direct pull and no connection set-up. The stdlib's header parsing (the
``email`` package, ~60 us per header block) was most of the service's own
cost per request, so requests and upstream responses are parsed here by a
plain line reader: HTTP/1.1 framing (Content-Length, chunked, close-delimited,
HEAD/204/304, 1xx) is all a registry speaks. Small answers go out in one
``sendall`` and ``TCP_NODELAY`` is on both sides, so no Nagle/delayed-ACK stall
adds latency. ``bench/serve_latency.py`` measures the result.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import prometheus_client as prom

from .errors import BakeryError
from .oci import ACCEPT
from .serve_lazy import BAKE_TIMEOUT, JsonLog, Lazy, Outcome, parse_node_tag, split_tag

CHUNK = 64 << 10
SMALL = 256 << 10          # bodies up to this size are read whole and sent with the headers
UPSTREAM_TIMEOUT = 300.0   # seconds per socket operation to the upstream
CLIENT_TIMEOUT = 600.0     # idle / stalled client connections are closed after this
MAX_HEADERS = 200

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "proxy-connection", "host", "content-length",
                        "expect"})
MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)/manifests/(?P<ref>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")
REASONS = {s.value: s.phrase for s in HTTPStatus}
ERROR_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "MANIFEST_UNKNOWN", 429: "TOOMANYREQUESTS",
               503: "UNAVAILABLE"}


class UpstreamDown(Exception):
    pass


class BadRequest(Exception):
    pass


# -- headers ---------------------------------------------------------------------

class Headers:
    """Header lines in order (repeats kept: Go sends one ``Accept`` line per media type),
    looked up case-insensitively; what the handler and ``http.server`` use of
    ``email.message.Message``."""

    __slots__ = ("_items", "_first")

    def __init__(self, items: list[tuple[str, str]]):
        self._items = items
        self._first: dict[str, str] = {}
        for k, v in items:
            self._first.setdefault(k.lower(), v)

    def get(self, name: str, default=None):
        return self._first.get(name.lower(), default)

    def __getitem__(self, name: str):
        return self._first.get(name.lower())

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._first

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def get_all(self, name: str, default=None):
        name = name.lower()
        found = [v for k, v in self._items if k.lower() == name]
        return found or default


def read_headers(fp) -> Headers:
    items: list[tuple[str, str]] = []
    while True:
        line = fp.readline(65537)
        if len(line) > 65536:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return Headers(items)
        if line[:1] in (b" ", b"\t") and items:  # obsolete line folding
            k, v = items[-1]
            items[-1] = (k, f"{v} {line.decode('latin-1').strip()}")
            continue
        k, sep, v = line.decode("latin-1").partition(":")
        if not sep or not k or k != k.strip():
            raise http.client.HTTPException(f"malformed header line {line[:80]!r}")
        items.append((k, v.strip()))
        if len(items) > MAX_HEADERS:
            raise http.client.HTTPException(f"more than {MAX_HEADERS} headers")


# -- the upstream ----------------------------------------------------------------

class Upstream:
    """Where the registry is: ``http://127.0.0.1:5000`` (a bare HOST:PORT is http on
    loopback, https elsewhere)."""

    def __init__(self, url: str, tls_verify: bool = True):
        from . import oci

        if "://" not in url:
            url = ("http://" if oci.is_loopback(url) else "https://") + url
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname or (u.path not in ("", "/")):
            raise BakeryError(f"--upstream {url!r}: expected http[s]://HOST[:PORT]")
        self.scheme, self.netloc = u.scheme, u.netloc
        self.host, self.port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.tls_verify = tls_verify
        self.base = f"{self.scheme}://{self.netloc}"

    def socket(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=UPSTREAM_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.scheme == "https":
            import ssl

            ctx = ssl.create_default_context()
            if not self.tls_verify:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        return sock


class UpstreamConn:
    """One keep-alive HTTP/1.1 connection to the upstream, used by one thread."""

    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.sock: socket.socket | None = None
        self.rfile = None
        self.reused = False

    def open(self) -> None:
        if self.sock is None:
            self.sock = self.upstream.socket()
            self.rfile = self.sock.makefile("rb", buffering=CHUNK)
            self.reused = False

    def idle_but_closed(self) -> bool:
        """An idle keep-alive connection that is readable was closed by the upstream."""
        if self.sock is None:
            return False
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.rfile.close()
                self.sock.close()
            except OSError:
                pass
        self.sock = self.rfile = None

    def send(self, method: str, path: str, headers: list[tuple[str, str]], body=None, chunked: bool = False) -> None:
        head = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        sock = self.sock
        if body is None or isinstance(body, bytes):
            sock.sendall(data + (body or b""))
        elif chunked:
            sock.sendall(data)
            for piece in body:
                if piece:
                    sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        else:
            sock.sendall(data)
            while True:
                piece = body.read(CHUNK)
                if not piece:
                    break
                sock.sendall(piece)

    def response(self, method: str) -> "Response":
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise http.client.RemoteDisconnected("the upstream closed the connection without a response")
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise http.client.BadStatusLine(line[:80])
            version, status, reason = parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""
            headers = read_headers(self.rfile)
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and friends: the real answer follows
            break
        conn_hdr = (headers.get("Connection") or "").lower()
        will_close = "close" in conn_hdr or (version == "HTTP/1.0" and "keep-alive" not in conn_hdr)
        te = (headers.get("Transfer-Encoding") or "").lower()
        length = headers.get("Content-Length")
        if method == "HEAD" or status in (204, 304):
            mode, n = "none", 0
        elif "chunked" in te:
            mode, n = "chunked", None
        elif length is not None and length.strip().isdigit():
            mode, n = "length", int(length)
        else:
            mode, n, will_close = "close", None, True
        return Response(self, status, reason, headers, mode, n, will_close)


class Response:
    """An upstream answer whose body is read in pieces (``readinto``) or whole (``read``)."""

    def __init__(self, conn: UpstreamConn, status: int, reason: str, headers: Headers, mode: str,
                 length: int | None, will_close: bool):
        self.conn, self.status, self.reason, self.headers = conn, status, reason, headers
        self.mode, self.left, self.will_close = mode, length, will_close
        self.done = mode == "none" or (mode == "length" and length == 0)
        self._chunk_left = 0

    def readinto(self, view: memoryview) -> int:
        if self.done:
            return 0
        f = self.conn.rfile
        if self.mode == "length":
            n = f.readinto1(view[: min(len(view), self.left)])
            if not n:
                raise ConnectionError("the upstream closed the connection in the middle of a body")
            self.left -= n
            self.done = self.left == 0
            return n
        if self.mode == "close":
            n = f.readinto1(view)
            self.done = not n
            return n
        if self._chunk_left == 0:  # chunked: the next chunk's size line
            line = f.readline(1024)
            if not line:
                raise ConnectionError("the upstream closed the connection in the middle of a chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while f.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                self.done = True
                return 0
            self._chunk_left = size
        n = f.readinto1(view[: min(len(view), self._chunk_left)])
        if not n:
            raise ConnectionError("the upstream closed the connection in the middle of a chunk")
        self._chunk_left -= n
        if self._chunk_left == 0:
            f.readline(16)
        return n

    def read(self) -> bytes:
        if self.done:
            return b""
        if self.mode == "length":
            data = self.conn.rfile.read(self.left)
            if len(data) != self.left:
                raise ConnectionError("the upstream closed the connection in the middle of a body")
            self.left, self.done = 0, True
            return data
        out = bytearray()
        buf = memoryview(bytearray(CHUNK))
        while n := self.readinto(buf):
            out += buf[:n]
        return bytes(out)


# -- the request body, from the client -----------------------------------------------

class _Limited:
    """The request body: exactly ``n`` bytes of the client's stream, read in pieces."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.f.read1(size)
        if not data:
            raise ConnectionError("the client closed the connection in the middle of the body")
        self.left -= len(data)
        return data


def _dechunk(f):
    """A chunked request body, decoded, piece by piece (re-chunked to the upstream)."""
    while True:
        line = f.readline(1024)
        if not line:
            raise ConnectionError("the client closed the connection in the middle of a chunked body")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while f.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return
        left = size
        while left:
            data = f.read1(min(left, CHUNK))
            if not data:
                raise ConnectionError("the client closed the connection in the middle of a chunk")
            left -= len(data)
            yield data
        f.readline(16)


# -- the handler -------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bakery-serve"
    sys_version = ""
    timeout = CLIENT_TIMEOUT
    server: "Server"

    # -- connection life --

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._up = UpstreamConn(self.server.upstream)

    def finish(self):
        try:
            super().finish()
        finally:
            self._up.close()

    def log_message(self, format, *args):  # no access log: bakes are logged as JSON lines
        pass

    def parse_request(self) -> bool:
        """``BaseHTTPRequestHandler.parse_request`` with the fast header reader."""
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3:
            if words:
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline[:100]!r})")
            return False
        command, path, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Unsupported HTTP version ({version[:20]!r})")
            return False
        self.request_version = version
        self.command, self.path = command, path
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")
        try:
            self.headers = read_headers(self.rfile)
        except (http.client.HTTPException, ValueError) as e:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                            if isinstance(e, http.client.LineTooLong) else HTTPStatus.BAD_REQUEST, str(e)[:200])
            return False
        conntype = (self.headers.get("Connection") or "").lower()
        self.close_connection = (version == "HTTP/1.0" and conntype != "keep-alive") or conntype == "close"
        if (self.headers.get("Expect") or "").lower() == "100-continue" and version == "HTTP/1.1":
            if not self.handle_expect_100():
                return False
        return True

    # -- dispatch --

    def do_GET(self):
        self.arrived = time.monotonic()
        path = self.path
        if path.startswith(("http://", "https://")):  # absolute-form request target
            u = urlsplit(path)
            path = u.path + (f"?{u.query}" if u.query else "")
        p = path.split("?", 1)[0]
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
        try:
            resp = self._forward(path)
        except (UpstreamDown, BadRequest) as e:
            return self._upstream_down(e)
        self._relay(resp)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- the one path that is not plain passthrough --

    def _manifest(self, path: str, repo: str, ref: str):
        lazy = self.server.lazy
        try:
            resp = self._forward(path)
        except (UpstreamDown, BadRequest) as e:
            return self._upstream_down(e)
        parts = split_tag(ref) if resp.status == 404 else None
        if parts is None or parts[0] == "sha256":  # not <base>-<something>; sha256-<hex>: referrers, cosign
            if resp.status == 200 and parse_node_tag(ref):
                lazy.metrics.cache_hits.inc()
            return self._relay(resp)
        try:
            body = resp.read()  # a small error document: kept, in case the 404 stands
        except (OSError, http.client.HTTPException) as e:
            self._up.close()
            return self._upstream_down(UpstreamDown(f"the upstream {self.server.upstream.base} broke off: {e}"))
        self._done(resp)
        # The service's own credentials may see tags this client may not: whatever they would tell
        # (the tag exists, a bake starts, a hint) is only for a client the upstream shows the IR image.
        try:
            probe = self._forward(f"/v2/{repo}/manifests/{parts[0]}", method="HEAD", accept=ACCEPT)
        except (UpstreamDown, BadRequest) as e:
            return self._upstream_down(e)
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
        try:
            resp = self._forward(path)
        except (UpstreamDown, BadRequest) as e:
            return self._upstream_down(e)
        self._relay(resp)

    def _relay_head(self, resp: Response):
        """The answer to a HEAD sent for the client (its status and headers, ``WWW-Authenticate``
        among them), to a GET too: with an OCI error body of its own, the upstream sent none."""
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in ("content-type", "content-length")]
        headers.append(("Content-Type", "application/json"))
        out = Outcome(resp.status, ERROR_CODES.get(resp.status, "UNKNOWN"), resp.reason or REASONS.get(resp.status, ""))
        self._send(resp.status, headers, out.body(), reason=resp.reason)

    # -- upstream round trip --

    def _forward(self, path: str, method: str | None = None, accept: str | None = None) -> Response:
        """The client's request to the upstream; with ``method``: that request instead, with the
        client's headers (its ``Authorization`` among them, ``Accept`` replaced) and no body."""
        up = self.server.upstream
        drop = HOP_BY_HOP | ({"accept"} if accept else set())
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in drop]
        if accept:
            headers.append(("Accept", accept))
        headers.append(("Host", up.netloc))
        body, chunked = None, False
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if method is not None:
            pass
        elif "chunked" in te:
            body, chunked = _dechunk(self.rfile), True
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            length = self.headers.get("Content-Length")
            if length is not None:
                if not length.strip().isdigit():
                    self.close_connection = True
                    raise BadRequest(f"bad Content-Length {length[:40]!r}")
                n = int(length)
                headers.append(("Content-Length", str(n)))
                body = _Limited(self.rfile, n) if n else b""
        method = method or self.command
        replayable = body is None or isinstance(body, bytes)
        conn = self._up
        for attempt in (0, 1):
            if conn.idle_but_closed():
                conn.close()
            try:
                fresh = conn.sock is None
                conn.open()
                conn.send(method, path, headers, body, chunked)
                resp = conn.response(method)
                conn.reused = True
                return resp
            except ConnectionError as e:
                if isinstance(e, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)) \
                        and not fresh and attempt == 0 and replayable:
                    conn.close()
                    continue  # a stale keep-alive connection: once more on a fresh one
                conn.close()
                self.close_connection = True
                who = "the client" if "client" in str(e) else f"the upstream {up.base}"
                raise UpstreamDown(f"{who} broke off the connection: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if not replayable:
                    self.close_connection = True
                raise UpstreamDown(f"the upstream {up.base} is unreachable: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
        raise AssertionError("unreachable")

    def _done(self, resp: Response) -> None:
        """After a response: keep the upstream connection only if it is reusable."""
        if resp.will_close or not resp.done:
            self._up.close()

    def _rewrite(self, value: str) -> str:
        up = self.server.upstream
        mine = f"http://{self.headers.get('Host') or self.server.address}"
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
            if resp.mode == "none":
                length = resp.headers.get("Content-Length")
                if length is not None and resp.status not in (204, 304):
                    headers.append(("Content-Length", length))
                self._write_head(resp.status, resp.reason, headers)
            elif resp.mode == "length" and resp.left <= SMALL:
                self._send(resp.status, headers, resp.read(), reason=resp.reason)
            elif resp.mode == "length":
                headers.append(("Content-Length", str(resp.left)))
                self._write_head(resp.status, resp.reason, headers)
                self._copy(resp)
            else:
                chunked = self.request_version == "HTTP/1.1"
                if chunked:
                    headers.append(("Transfer-Encoding", "chunked"))
                else:
                    self.close_connection = True
                self._write_head(resp.status, resp.reason, headers)
                self._copy(resp, chunked=chunked)
        except (OSError, http.client.HTTPException):
            # The client or the upstream went away mid-body: neither connection can be reused.
            self.close_connection = True
        finally:
            self._done(resp)

    def _copy(self, resp: Response, chunked: bool = False):
        view = memoryview(bytearray(CHUNK))
        w = self.wfile
        while n := resp.readinto(view):
            if chunked:
                w.write(b"%x\r\n" % n + view[:n].tobytes() + b"\r\n")
            else:
                w.write(view[:n])
        if chunked:
            w.write(b"0\r\n\r\n")

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
        if self.headers.get("Content-Length") not in (None, "0") or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # an unread request body
        reason = None
        if outcome.status >= 500:
            # containers/image (skopeo, buildah, podman) shows no body of a 5xx answer, only its
            # status line: the reason goes there too, on one line.
            text = " ".join(outcome.message.split()).encode("latin-1", "replace").decode("latin-1")
            reason = f"{REASONS.get(outcome.status, 'Error')}: {text[:300]}"
        self._send(outcome.status, headers, outcome.body(), reason=reason)

    def _upstream_down(self, e: Exception):
        if isinstance(e, BadRequest):
            return self._oci_error(Outcome(400, "UNSUPPORTED", str(e)))
        self.server.log("upstream", outcome="unreachable", error=str(e), path=self.path[:200])
        self._oci_error(Outcome(502, "UNAVAILABLE", str(e), retry_after=5))

    def _health(self):
        ok, detail = self.server.check_upstream()
        body = json.dumps({"status": "ok" if ok else "unhealthy", "upstream": self.server.upstream.base,
                           "detail": detail}).encode()
        self._plain(200 if ok else 503, body + b"\n", "application/json")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256   # bursts of pulls (a job starting on many nodes) are not refused at connect

    def __init__(self, listen: tuple[str, int], upstream: Upstream, lazy: Lazy, log: JsonLog | None = None):
        self.upstream, self.lazy = upstream, lazy
        self.log = log or lazy.log
        super().__init__(listen, Handler)
        host, port = self.server_address[:2]
        self.address = f"{host}:{port}"

    def check_upstream(self) -> tuple[bool, str]:
        conn = UpstreamConn(self.upstream)
        try:
            conn.open()
            conn.sock.settimeout(5)
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
    if not sep or not port.isdigit():
        raise BakeryError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5001")
    return host.strip("[]") or "127.0.0.1", int(port)


def make_server(*, upstream: str, listen: str, engine=None, bake_fn=None, policy=None, workers: int = 1,
                queue_size: int = 16, deadline: float = 300.0, backoff: float = 30.0,
                bake_timeout: float = BAKE_TIMEOUT, tls_verify: bool | None = None,
                log: JsonLog | None = None) -> Server:
    """A ready service (not yet serving: call ``serve_forever``)."""
    from . import oci
    from .serve_lazy import bake_with_engine

    up = Upstream(upstream)
    up.tls_verify = (not oci.is_loopback(up.netloc)) if tls_verify is None else tls_verify
    if bake_fn is None:
        if engine is None:
            from . import engine as enginemod

            engine = enginemod.get()
        bake_fn = bake_with_engine(engine)
    log = log or JsonLog()
    lazy = Lazy(up.netloc, bake_fn, policy=policy, workers=workers, queue_size=queue_size, deadline=deadline,
                backoff=backoff, bake_timeout=bake_timeout, tls_verify=up.tls_verify, log=log)
    try:
        return Server(parse_listen(listen), up, lazy, log)
    except OSError as e:
        raise BakeryError(f"cannot listen on {listen}: {e.strerror or e}") from None


def serve_in_thread(server: Server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name="bakery-serve")
    t.start()
    return t
