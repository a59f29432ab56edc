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

Why stdlib ``ThreadingHTTPServer`` + ``http.client``: one thread per client
connection is what a registry front needs here. The work it does per request is
blocking I/O (relaying a socket to a socket) or waiting on a bake; threads keep
both simple and let a slow blob transfer or a long wait never stall other
clients. Each client connection keeps its own keep-alive ``http.client``
connection to the upstream, so a cache hit costs one loopback round trip more
than a direct pull and no connection set-up; no third-party server (and its
event-loop/thread-pool bridging for the blocking bakes) is needed. Responses
are written with a single ``sendall`` for small bodies and ``TCP_NODELAY`` is on
both sides, so no Nagle/delayed-ACK stall adds latency.
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import prometheus_client as prom

from .errors import BakeryError
from .serve_lazy import JsonLog, Lazy, Outcome, parse_node_tag

CHUNK = 64 << 10
SMALL = 256 << 10          # bodies up to this size are read whole and sent with the headers
UPSTREAM_TIMEOUT = 300.0   # seconds per socket operation to the upstream
CLIENT_TIMEOUT = 600.0     # idle / stalled client connections are closed after this

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "proxy-connection", "host", "content-length",
                        "expect"})
MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)/manifests/(?P<ref>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")


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

    def connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            import ssl

            ctx = ssl.create_default_context()
            if not self.tls_verify:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            return http.client.HTTPSConnection(self.host, self.port, timeout=UPSTREAM_TIMEOUT, context=ctx,
                                               blocksize=CHUNK)
        return http.client.HTTPConnection(self.host, self.port, timeout=UPSTREAM_TIMEOUT, blocksize=CHUNK)


class UpstreamDown(Exception):
    pass


class BadRequest(Exception):
    pass


class _Limited:
    """The request body: exactly ``n`` bytes of the client's stream, read in pieces."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.f.read(size)
        if not data:
            raise ConnectionError("client closed the connection in the middle of the body")
        self.left -= len(data)
        return data


def _dechunk(f):
    """A chunked request body, decoded, piece by piece (re-chunked to the upstream)."""
    while True:
        line = f.readline(1024)
        if not line:
            raise ConnectionError("client closed the connection in the middle of a chunked body")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while f.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return
        left = size
        while left:
            data = f.read(min(left, CHUNK))
            if not data:
                raise ConnectionError("client closed the connection in the middle of a chunk")
            left -= len(data)
            yield data
        f.readline(16)


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
        self._up: http.client.HTTPConnection | None = None

    def finish(self):
        try:
            super().finish()
        finally:
            self._drop_upstream()

    def log_message(self, format, *args):  # no access log: the bakes are logged as JSON lines
        pass

    def _drop_upstream(self):
        if self._up is not None:
            self._up.close()
            self._up = None

    def _upstream_conn(self) -> http.client.HTTPConnection:
        conn = self._up
        if conn is not None and conn.sock is not None:
            # An idle keep-alive connection that is readable has been closed by the upstream.
            try:
                readable = select.select([conn.sock], [], [], 0)[0]
            except (OSError, ValueError):
                readable = True
            if readable:
                self._drop_upstream()
                conn = None
        if conn is None:
            conn = self._up = self.server.upstream.connect()
        return conn

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
            return self._oci_error(Outcome(404, "UNSUPPORTED", f"{p} is not an OCI distribution path"))
        if self.command in ("GET", "HEAD"):
            m = MANIFEST_PATH.match(p)
            if m and not m["ref"].startswith("sha256"):
                return self._manifest(path, m["repo"], m["ref"])
        try:
            resp = self._forward(path)
        except (UpstreamDown, BadRequest) as e:
            return self._upstream_down(e)
        self._relay(resp)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- the one path that is not plain passthrough --

    def _manifest(self, path: str, repo: str, ref: str):
        try:
            resp = self._forward(path)
        except (UpstreamDown, BadRequest) as e:
            return self._upstream_down(e)
        if resp.status != 404 or "-" not in ref:
            if resp.status == 200 and parse_node_tag(ref):
                self.server.lazy.metrics.cache_hits.inc()
            return self._relay(resp)
        body = resp.read()  # a small error document: kept, in case the 404 stands
        headers = resp.getheaders()
        outcome = self.server.lazy.ensure(repo, ref, self.arrived)
        if outcome is None:
            return self._send(404, headers, body)
        if not outcome.ok:
            return self._oci_error(outcome)
        try:
            resp = self._forward(path)
        except (UpstreamDown, BadRequest) as e:
            return self._upstream_down(e)
        self._relay(resp)

    # -- upstream round trip --

    def _forward(self, path: str) -> http.client.HTTPResponse:
        up = self.server.upstream
        # A list, not a dict: clients repeat headers (Go sends one Accept line per media type).
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        headers.append(("Host", up.netloc))
        body, chunked = None, False
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            body, chunked = _dechunk(self.rfile), True
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            length = self.headers.get("Content-Length")
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    n = -1
                if n < 0:
                    self.close_connection = True
                    raise BadRequest(f"bad Content-Length {length!r}")
                headers.append(("Content-Length", str(n)))
                body = _Limited(self.rfile, n) if n else b""
        replayable = body is None or body == b""
        for attempt in (0, 1):
            conn = self._upstream_conn()
            try:
                conn.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(body, encode_chunked=chunked)
                # (when the upstream closes after this response, http.client hands the socket to
                # the response and opens a new connection for the next request by itself)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.BadStatusLine) as e:
                self._drop_upstream()
                if attempt == 0 and replayable:
                    continue  # a stale keep-alive connection: once more on a fresh one
                self.close_connection = True
                raise UpstreamDown(f"the upstream {up.base} dropped the connection: {e!r}") from None
            except ConnectionError as e:  # the client went away while its body was sent on
                self._drop_upstream()
                self.close_connection = True
                raise UpstreamDown(str(e)) from None
            except OSError as e:
                self._drop_upstream()
                if not replayable:
                    self.close_connection = True
                raise UpstreamDown(f"the upstream {up.base} is unreachable: {e.strerror or e}") from None
        raise AssertionError("unreachable")

    def _rewrite(self, value: str) -> str:
        up = self.server.upstream
        mine = f"http://{self.headers.get('Host') or self.server.address}"
        for prefix in (up.base, f"http://{up.netloc}", f"https://{up.netloc}"):
            if value.startswith(prefix):
                return mine + value[len(prefix):]
        return value.replace(f"<{up.base}/", f"<{mine}/")

    def _relay(self, resp: http.client.HTTPResponse):
        headers = []
        for k, v in resp.getheaders():
            lk = k.lower()
            if lk in HOP_BY_HOP:
                continue
            if lk in ("location", "link"):
                v = self._rewrite(v)
            headers.append((k, v))
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        try:
            if no_body:
                if length is not None:
                    headers.append(("Content-Length", length))
                resp.read()
                self._write_head(resp.status, resp.reason, headers)
            elif length is not None and int(length) <= SMALL:
                self._send(resp.status, headers, resp.read(), reason=resp.reason)
            elif length is not None:
                headers.append(("Content-Length", length))
                self._write_head(resp.status, resp.reason, headers)
                self._copy(resp, int(length))
            else:
                if self.request_version == "HTTP/1.1":
                    headers.append(("Transfer-Encoding", "chunked"))
                else:
                    self.close_connection = True
                self._write_head(resp.status, resp.reason, headers)
                self._copy(resp, None, chunked=self.request_version == "HTTP/1.1")
        except (OSError, http.client.HTTPException):
            # The client or the upstream went away mid-body: neither connection can be reused.
            self._drop_upstream()
            self.close_connection = True
        finally:
            if not resp.isclosed():
                resp.close()
                self._drop_upstream()

    def _copy(self, resp, length: int | None, chunked: bool = False):
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        w = self.wfile
        left = length
        while left is None or left > 0:
            n = resp.readinto(view if left is None or left >= CHUNK else view[:left])
            if not n:
                if left:
                    raise ConnectionError("the upstream closed the connection in the middle of a body")
                break
            if chunked:
                w.write(b"%x\r\n" % n + view[:n].tobytes() + b"\r\n")
            else:
                w.write(view[:n])
            if left is not None:
                left -= n
        if chunked:
            w.write(b"0\r\n\r\n")

    # -- writing answers --

    def _write_head(self, status: int, reason: str | None, headers, extra: bytes = b""):
        lines = [f"HTTP/1.1 {status} {reason or self.responses.get(status, ('',))[0]}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + extra)

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
            # containers/image (skopeo, buildah, podman) shows no body of a 5xx answer, only its status
            # line: the reason goes there too, on one line.
            text = " ".join(outcome.message.split()).encode("latin-1", "replace").decode("latin-1")
            reason = f"{self.responses.get(outcome.status, ('Error',))[0]}: {text[:300]}"
        self._send(outcome.status, headers, outcome.body(), reason=reason)

    def _upstream_down(self, e: Exception):
        if isinstance(e, BadRequest):
            return self._oci_error(Outcome(400, "UNSUPPORTED", str(e)))
        self.server.log("upstream", outcome="unreachable", error=str(e), path=self.path[:200])
        self._oci_error(Outcome(502, "UNAVAILABLE", str(e), retry_after=5))

    def _health(self):
        import json

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
        conn = self.upstream.connect()
        conn.timeout = 5
        try:
            conn.request("GET", "/v2/", headers={"Host": self.upstream.netloc})
            r = conn.getresponse()
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
                tls_verify: bool | None = None, log: JsonLog | None = None) -> Server:
    """A ready service (not yet serving: call ``serve_forever``)."""
    from . import oci
    from .serve_lazy import bake_with_engine

    up = Upstream(upstream)
    verify = (not oci.is_loopback(up.netloc)) if tls_verify is None else tls_verify
    up.tls_verify = verify
    if bake_fn is None:
        if engine is None:
            from . import engine as enginemod

            engine = enginemod.get()
        bake_fn = bake_with_engine(engine)
    log = log or JsonLog()
    lazy = Lazy(up.netloc, bake_fn, policy=policy, workers=workers, queue_size=queue_size, deadline=deadline,
                backoff=backoff, tls_verify=verify, log=log)
    try:
        return Server(parse_listen(listen), up, lazy, log)
    except OSError as e:
        raise BakeryError(f"cannot listen on {listen}: {e.strerror or e}") from None


def serve_in_thread(server: Server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name="bakery-serve")
    t.start()
    return t
