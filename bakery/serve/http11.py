"""The HTTP/1.1 of ``bakery serve``: header blocks, strict framing, message bodies, and the
client to the upstream registry (its connections, their pool, its answers).

The stdlib's header parsing (the ``email`` package, ~60 us per header block) was most of the
service's own cost per request, so requests and upstream responses are parsed here by a plain
line reader: HTTP/1.1 framing (Content-Length, chunked, close-delimited, HEAD/204/304, 1xx) is
all a registry speaks. Keep-alive connections to the upstream are pooled and shared by all
handler threads (a connection goes back only when its answer was read whole), and
``TCP_NODELAY`` is on, so no Nagle/delayed-ACK stall adds latency.

One set of body readers serves both directions: the upstream's answers and the clients' request
bodies. What differs is the peer: a client's stall or hang-up is :class:`ClientGone` and its
malformed body :class:`BadRequest` (a 408 or a 400, never an upstream error); the upstream's
are ``ConnectionError`` and ``http.client.HTTPException``.
"""

from __future__ import annotations

import http.client
import io
import re
import select
import socket
import threading
from collections.abc import Callable
from typing import TypeVar, cast
from urllib.parse import urlsplit

from bakery import oci
from bakery.errors import BakeryError

CHUNK = 64 << 10
UPSTREAM_TIMEOUT = 300.0   # seconds per socket operation to the upstream
POOL_SIZE = 32             # idle keep-alive upstream connections kept for reuse
MAX_HEADERS = 200

DIGITS = re.compile(r"[0-9]{1,18}")                         # Content-Length: ASCII only (not str.isdigit's "²")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")          # a header name, a method (RFC 9110 token)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")                # in a header value: a bare CR could split it upstream

_A = TypeVar("_A")
_R = TypeVar("_R")


class BadRequest(Exception):
    """The client's request is malformed: 400, and the connection is closed (its framing is unknown)."""


class ClientGone(Exception):
    """The client stalled (``body_timeout``) or closed the connection in the middle of its request body."""


# -- strict framing ------------------------------------------------------------------

def content_length(values: list[str]) -> int:
    """The one Content-Length of a message; repeated differing values are a smuggling attempt."""
    found = {v.strip(" \t") for v in values}
    if len(found) != 1 or not DIGITS.fullmatch(text := found.pop()):
        raise BadRequest(f"bad Content-Length {', '.join(values)[:40]!r}")
    return int(text)


def chunk_size(line: bytes) -> int | None:
    """The size on a chunk's size line (extensions ignored), None when it is not one."""
    if not line.endswith(b"\n"):
        return None
    size = line.split(b";", 1)[0].strip(b" \t\r\n")
    return int(size, 16) if _CHUNK_SIZE.fullmatch(size) else None


def request_framing(headers: Headers, version: str) -> tuple[bool, int | None]:
    """How a request's body is framed: (chunked, Content-Length). One coding, chunked, and no
    Content-Length beside it: anything else is read one way here and another way by some server
    behind (request smuggling), a BadRequest."""
    te, cl = headers.get_all("Transfer-Encoding"), headers.get_all("Content-Length")
    if te:
        if cl or len(te) != 1 or te[0].strip().lower() != "chunked" or version != "HTTP/1.1":
            raise BadRequest(f"unsupported request framing: Transfer-Encoding {', '.join(te)[:40]!r}"
                             + (" with Content-Length" if cl else ""))
        return True, None
    return False, content_length(cl) if cl else None


# -- headers ---------------------------------------------------------------------

class Headers:
    """Header lines in order (repeats kept: Go sends one ``Accept`` line per media type),
    looked up case-insensitively; what the handler uses of ``email.message.Message``."""

    __slots__ = ("_items", "_first")

    def __init__(self, items: list[tuple[str, str]]):
        self._items = items
        self._first: dict[str, str] = {}
        for k, v in items:
            self._first.setdefault(k.lower(), v)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return self._first.get(name.lower())

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._first

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order; none: an empty list."""
        name = name.lower()
        return [v for k, v in self._items if k.lower() == name]


def read_headers(fp: io.BufferedIOBase) -> Headers:
    items: list[tuple[str, str]] = []
    while True:
        line = fp.readline(65537)
        if len(line) > 65536:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return Headers(items)
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t") and items:  # obsolete line folding
            k, v = items.pop()
            sep, v = ":", f"{v} {text}"
        else:
            k, sep, v = text.partition(":")
        v = v.strip(" \t\r\n")
        if not sep or not TOKEN.fullmatch(k):
            raise http.client.HTTPException(f"malformed header line {line[:80]!r}")
        if _CTL.search(v):
            raise http.client.HTTPException(f"a control character in header {k[:40]}")
        items.append((k, v))
        if len(items) > MAX_HEADERS:
            raise http.client.HTTPException(f"more than {MAX_HEADERS} headers")


# -- message bodies, from either peer --------------------------------------------------

class FromUpstream:
    """The upstream's stream, as the body readers read it: its OSErrors as they are, a hang-up
    in the middle of a body a ``ConnectionError``, a malformed body an ``HTTPException``."""

    name = "the upstream"
    eof_ends_trailers = True   # a server's trailer section may end at EOF (as http.client reads it)

    def __init__(self, f: io.BufferedIOBase):
        self.f = f

    def readline(self, limit: int, what: str) -> bytes:
        return self._io(self.f.readline, limit, what)

    def readinto1(self, view: memoryview, what: str) -> int:
        return self._io(self.f.readinto1, view, what)

    def read(self, n: int, what: str) -> bytes:
        return self._io(self.f.read, n, what)

    def _io(self, op: Callable[[_A], _R], arg: _A, what: str) -> _R:
        return op(arg)

    def gone(self, what: str) -> Exception:
        return ConnectionError(f"{self.name} closed the connection in the middle of {what}")

    def bad(self, message: str) -> Exception:
        return http.client.HTTPException(f"{self.name} sent a bad chunked body: {message}")


class FromClient(FromUpstream):
    """A client's stream: its stalls and hang-ups are ClientGone and its malformed body a
    BadRequest, never an upstream error."""

    name = "the client"
    eof_ends_trailers = False

    def _io(self, op: Callable[[_A], _R], arg: _A, what: str) -> _R:
        try:
            return op(arg)
        except OSError as e:
            raise ClientGone(f"the client stalled or broke off in the middle of {what}: "
                             f"{getattr(e, 'strerror', None) or e}") from None

    def gone(self, what: str) -> Exception:
        return ClientGone(f"{self.name} closed the connection in the middle of {what}")

    def bad(self, message: str) -> Exception:
        return BadRequest(message)


class Body:
    """A message body, read in pieces (``readinto``, 0 at its end) or whole (``read``)."""

    def __init__(self, src: FromUpstream):
        self.src, self.done = src, False

    def readinto(self, view: memoryview) -> int:
        raise NotImplementedError

    def read(self) -> bytes:
        out = bytearray()
        buf = memoryview(bytearray(CHUNK))
        while n := self.readinto(buf):
            out += buf[:n]
        return bytes(out)


class Length(Body):
    """Exactly ``n`` bytes (a Content-Length)."""

    def __init__(self, src: FromUpstream, n: int):
        super().__init__(src)
        self.left, self.done = n, n == 0

    def readinto(self, view: memoryview) -> int:
        if self.done:
            return 0
        n = self.src.readinto1(view[: min(len(view), self.left)], "the body")
        if not n:
            raise self.src.gone("the body")
        self.left -= n
        self.done = self.left == 0
        return n

    def read(self) -> bytes:
        if self.done:
            return b""
        data = self.src.read(self.left, "the body")
        if len(data) != self.left:
            raise self.src.gone("the body")
        self.left, self.done = 0, True
        return data


class ToClose(Body):
    """A body that ends when the connection does (an HTTP/1.0-style answer)."""

    def readinto(self, view: memoryview) -> int:
        if self.done:
            return 0
        n = self.src.readinto1(view, "the body")
        self.done = not n
        return n


class Chunked(Body):
    """A chunked body, decoded: strict sizes (ASCII hex, extensions ignored), each chunk's CRLF,
    and at most MAX_HEADERS trailer lines, skipped."""

    def __init__(self, src: FromUpstream):
        super().__init__(src)
        self.left = 0   # of the chunk being read

    def readinto(self, view: memoryview) -> int:
        if self.done:
            return 0
        src = self.src
        if self.left == 0:  # the next chunk's size line
            line = src.readline(1024, "a chunked body")
            if not line:
                raise src.gone("a chunked body")
            size = chunk_size(line)
            if size is None:
                raise src.bad(f"bad chunk size line {line[:40]!r}")
            if size == 0:
                self._trailers()
                self.done = True
                return 0
            self.left = size
        n = src.readinto1(view[: min(len(view), self.left)], "a chunk")
        if not n:
            raise src.gone("a chunk")
        self.left -= n
        if self.left == 0:
            end = src.readline(3, "a chunk")
            if not end:
                raise src.gone("a chunk")
            if end not in (b"\r\n", b"\n"):
                raise src.bad("a chunk without its CRLF")
        return n

    def _trailers(self) -> None:
        src = self.src
        for _ in range(MAX_HEADERS + 1):
            line = src.readline(1024, "a chunked body's trailers")
            if not line and not src.eof_ends_trailers:
                raise src.gone("a chunked body's trailers")
            if line in (b"\r\n", b"\n", b""):
                return
        raise src.bad("too many trailer lines")


def copy_body(body: Body, write: Callable[[bytes | memoryview], object], chunked: bool = False) -> None:
    """A body to ``write`` in pieces as they come, re-chunked when ``chunked``."""
    view = memoryview(bytearray(CHUNK))
    while n := body.readinto(view):
        write(b"%x\r\n" % n + view[:n] + b"\r\n" if chunked else view[:n])
    if chunked:
        write(b"0\r\n\r\n")


# -- the upstream ----------------------------------------------------------------

class Upstream:
    """Where the registry is: ``http://127.0.0.1:5000`` (a bare HOST:PORT is http on
    loopback, https elsewhere)."""

    def __init__(self, url: str, tls_verify: bool = True):
        if "://" not in url:
            url = ("http://" if oci.is_loopback(url) else "https://") + url
        u = urlsplit(url)
        if "@" in u.netloc:
            # It would show in /healthz, logs and error bodies; and the service's credentials are its own.
            raise BakeryError("--upstream: credentials in the URL are refused",
                              "give bakery serve its registry credentials in the containers auth file "
                              "($REGISTRY_AUTH_FILE, ~/.config/containers/auth.json) or the docker config")
        try:
            port = u.port
        except ValueError:
            port = -1
        if (u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query
                or u.fragment or port == -1):
            raise BakeryError(f"--upstream {u.scheme}://{u.netloc}: expected http[s]://HOST[:PORT]")
        self.scheme, self.netloc = u.scheme, u.netloc
        self.host, self.port = u.hostname, port or (443 if u.scheme == "https" else 80)
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
    """One keep-alive HTTP/1.1 connection to the upstream, used by one thread at a time
    (taken from the :class:`UpstreamPool`, given back once its answer was read whole)."""

    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.sock: socket.socket | None = None        # None: not open (yet, or any more)
        self.rfile: io.BufferedReader | None = None

    def open(self) -> socket.socket:
        if self.sock is None:
            self.sock = self.upstream.socket()
            self.rfile = cast(io.BufferedReader, self.sock.makefile("rb", buffering=CHUNK))
        return self.sock

    def idle_but_closed(self) -> bool:
        """An idle keep-alive connection that is readable was closed by the upstream."""
        if self.sock is None:
            return False
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        sock, rfile = self.sock, self.rfile
        self.sock = self.rfile = None
        if sock is not None:
            try:
                if rfile is not None:
                    rfile.close()
                sock.close()
            except OSError:
                pass

    def send(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | Body | None = None,
             chunked: bool = False) -> None:
        """The request; a ``Body`` is copied as it is read, re-chunked when ``chunked``."""
        sock = self.sock
        assert sock is not None, "send() on a connection not open"
        head = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if body is None or isinstance(body, bytes):
            sock.sendall(data + (body or b""))
        else:
            sock.sendall(data)
            copy_body(body, sock.sendall, chunked)

    def response(self, method: str) -> Response:
        rfile = self.rfile
        assert rfile is not None, "response() on a connection not open"
        while True:
            line = rfile.readline(65537)
            if not line:
                raise http.client.RemoteDisconnected("the upstream closed the connection without a response")
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not re.fullmatch(r"[1-5][0-9][0-9]", parts[1]):
                raise http.client.BadStatusLine(repr(line[:80]))
            version, status, reason = parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""
            headers = read_headers(rfile)
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and friends: the real answer follows
            break
        conn_hdr = (headers.get("Connection") or "").lower()
        will_close = "close" in conn_hdr or (version == "HTTP/1.0" and "keep-alive" not in conn_hdr)
        te = (headers.get("Transfer-Encoding") or "").lower()
        length = headers.get("Content-Length")
        src = FromUpstream(rfile)
        n: int | None = None
        body: Body
        if method == "HEAD" or status in (204, 304):
            mode, body = "none", Length(src, 0)
        elif te:
            if te.strip().lower() != "chunked":
                raise http.client.HTTPException(f"the upstream sent Transfer-Encoding {te[:40]!r}")
            mode, body = "chunked", Chunked(src)
        elif length is not None:
            try:
                n = content_length(headers.get_all("Content-Length"))
            except BadRequest:
                raise http.client.HTTPException(f"the upstream sent Content-Length {length[:40]!r}") from None
            mode, body = "length", Length(src, n)
        else:
            mode, body, will_close = "close", ToClose(src), True
        return Response(self, status, reason, headers, mode, n, body, will_close)


class UpstreamPool:
    """Idle keep-alive upstream connections, shared by the handler threads: a client that
    connects anew for each pull still finds a connection to the upstream open."""

    def __init__(self, upstream: Upstream, size: int = POOL_SIZE):
        self.upstream, self.size = upstream, size
        self.idle: list[UpstreamConn] = []
        self.lock = threading.Lock()

    def get(self) -> UpstreamConn:
        """An idle connection (the most recently used: the least likely to be stale), or a new,
        not yet opened one."""
        while True:
            with self.lock:
                conn = self.idle.pop() if self.idle else None
            if conn is None:
                return UpstreamConn(self.upstream)
            if not conn.idle_but_closed():
                return conn
            conn.close()

    def put(self, conn: UpstreamConn) -> None:
        """Only a connection whose last answer was read whole comes here."""
        if conn.sock is None:
            return
        with self.lock:
            if len(self.idle) < self.size:
                self.idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class Response:
    """An upstream answer whose body is read in pieces (``readinto``) or whole (``read``).
    ``mode``: how its body is framed (none, length, chunked, close); ``length``: the
    Content-Length of a ``length`` body, else None."""

    def __init__(self, conn: UpstreamConn, status: int, reason: str, headers: Headers, mode: str,
                 length: int | None, body: Body, will_close: bool):
        self.conn, self.status, self.reason, self.headers = conn, status, reason, headers
        self.mode, self.length, self.body, self.will_close = mode, length, body, will_close

    @property
    def done(self) -> bool:
        """The body was read to its end (the connection may serve the next request)."""
        return self.body.done

    def readinto(self, view: memoryview) -> int:
        return self.body.readinto(view)

    def read(self) -> bytes:
        return self.body.read()
