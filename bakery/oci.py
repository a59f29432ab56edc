"""OCI registry side: references, manifests, and the bake plan as an artifact.

The plan is pushed as an OCI artifact (as ``oras attach`` would) whose ``subject``
is the IR image manifest. CNCF distribution has no referrers API, so the OCI 1.1
referrers *tag schema* fallback is kept up to date as well: an image index at
tag ``sha256-<hex of the subject digest>`` listing the referrers. Lookups try
the referrers API first and fall back to that tag, as ``oras discover`` does.
A node tag's image compatibility artifact (``bakery/compat.py``) is attached
the same way (:func:`attach`).

The client (``Registry``) speaks the distribution API with the standard library alone: it runs in
bakery's own container image too, where only Debian's python3 is installed.
"""

from __future__ import annotations

import base64
import datetime
import email.message
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn
from urllib.parse import urlencode, urljoin, urlsplit

from bakery import PLAN_MEDIA_TYPE, __version__
from bakery.config import Settings
from bakery.errors import BakeryError, PlanRefused

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
ACCEPT = ", ".join([MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST])

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def valid_tag(tag: str) -> bool:
    """A tag as the distribution spec writes it: ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``."""
    return _TAG.match(tag) is not None


@dataclass(frozen=True)
class Ref:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, default_registry: str | None = None) -> Ref:
        name, _, digest_text = text.partition("@")
        digest = digest_text if "@" in text else None
        tag = None
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = name.rsplit(":", 1)
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            registry, repo = first, rest
        elif default_registry:
            registry, repo = default_registry, name
        else:
            raise BakeryError(f"{text!r} names no registry", "write it as HOST[:PORT]/REPO:TAG")
        if digest and not _DIGEST.match(digest):
            raise BakeryError(f"{text!r}: {digest!r} is not a sha256 digest")
        if tag and not valid_tag(tag):
            raise BakeryError(f"{text!r}: {tag!r} is not a valid tag")
        if not re.match(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$", repo):
            raise BakeryError(f"{text!r}: {repo!r} is not a valid repository name")
        if not tag and not digest:
            tag = "latest"
        return cls(registry, repo, tag, digest)

    def with_tag(self, tag: str) -> Ref:
        return Ref(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Ref:
        """Pinned by digest alone (engines refuse tag@digest)."""
        return Ref(self.registry, self.repository, None, digest)

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"{self.registry}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def names_registry(text: str) -> bool:
    first, _, rest = text.split("@", 1)[0].partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0][1:]
    return host in ("localhost", "::1") or host.startswith("127.")


def tls_default(registry: str, tls_verify: bool | None = None) -> bool:
    """TLS is verified unless asked otherwise, except for a loopback registry (plain http)."""
    return (not is_loopback(registry)) if tls_verify is None else tls_verify


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- credentials -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Login:
    """A registry login from an auth file. ``identity_token`` is docker's OAuth2 refresh token: it is
    exchanged at the token server (never sent to the registry itself)."""

    username: str
    password: str
    identity_token: str | None = None

    def __repr__(self) -> str:  # never shown, not even in a traceback's locals
        return f"Login(username={self.username!r}, password=<hidden>)"


def _auth_files() -> list[str]:
    """Where logins are, in the order podman/skopeo read them, then the docker config."""
    candidates = [os.environ.get("REGISTRY_AUTH_FILE")]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/containers/{os.getuid()}"
    candidates.append(os.path.join(runtime, "containers", "auth.json"))
    candidates.append(os.path.expanduser("~/.config/containers/auth.json"))
    docker = os.environ.get("DOCKER_CONFIG")
    candidates.append(os.path.join(docker, "config.json") if docker else os.path.expanduser("~/.docker/config.json"))
    return [c for c in candidates if c and os.path.isfile(c)]


_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}


def _auth_key(key: str) -> str:
    """An ``auths`` key as the host it is for: ``https://host/v1/`` and ``host`` alike."""
    key = key.strip().lower()
    for scheme in ("https://", "http://"):
        key = key.removeprefix(scheme)
    for suffix in ("/v1/", "/v1", "/v2/", "/v2", "/"):
        key = key.removesuffix(suffix)
    return key


def login_for(host: str) -> Login | None:
    """The login for ``host`` from the first auth file that has one, else None.

    An entry is ``{"auth": base64("user:password")}`` (or ``username``/``password``), with docker's
    ``identitytoken`` when there is one. Keys scoped to a namespace (``host/org``, which podman
    allows) are not used: logins here are per host. Docker credential helpers (``credsStore``,
    ``credHelpers``) are not run."""
    want = {host.lower()} | (_DOCKER_HUB if host.lower() in _DOCKER_HUB else set())
    for path in _auth_files():
        try:
            doc = json.loads(Path(path).read_bytes())
        except (OSError, ValueError, RecursionError):
            log.warning(f"{path}: not a readable JSON auth file: skipped")
            continue
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if not isinstance(key, str) or _auth_key(key) not in want or not isinstance(entry, dict):
                continue
            user, password = entry.get("username"), entry.get("password")
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    log.warning(f"{path}: the login for {key} is not base64 of user:password: skipped")
                    continue
            ident = entry.get("identitytoken")
            ident = ident if isinstance(ident, str) and ident else None
            if isinstance(user, str) and isinstance(password, str) and (user or password or ident):
                return Login(user, password, ident)
    return None


_TOKEN_CHARS = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_SCHEME = re.compile(_TOKEN_CHARS)
_PARAM = re.compile(rf'({_TOKEN_CHARS})[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^,\s]*)')


def challenges(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``WWW-Authenticate`` headers as (scheme in lower case, its parameters), in order:
    ``Bearer realm="https://auth/token",service="reg",scope="repository:a:pull,push"``."""
    out: list[tuple[str, dict[str, str]]] = []
    params: dict[str, str] | None
    for text in values:
        pos, params = 0, None  # the parameters of the challenge being read
        while pos < len(text):
            if text[pos] in " \t,":
                pos += 1
                continue
            m = _PARAM.match(text, pos)
            if m and params is not None:
                value = m.group(2)
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params[m.group(1).lower()] = value
                pos = m.end()
                continue
            m = _SCHEME.match(text, pos)
            if not m:
                break  # not a challenge: what was read so far stands
            params = {}
            out.append((m.group(0).lower(), params))
            pos = m.end()
    return out


# -- the transport -----------------------------------------------------------------------------------

RETRIES = 2  # after the first attempt, for timeouts, refused connections and 502/503/504
MAX_REDIRECTS = 5
MAX_ERROR_BYTES = 64 << 10
MAX_TOKEN_BYTES = 1 << 20
_REDIRECT = (301, 302, 303, 307, 308)
_USER_AGENT = f"bakery/{__version__}"


def request_timeout() -> float:
    """Seconds a registry may take to answer one request (BAKERY_REGISTRY_TIMEOUT, default 60)."""
    return Settings.from_env().registry_timeout


class RegistryError(BakeryError):
    """A registry's answer other than success: its HTTP status, and Retry-After in seconds when
    it sent one (``bakery serve`` does while it bakes: 503, and 429 with a full queue)."""

    def __init__(self, message: str, hint: str | None = None, *, status: int, retry_after: float | None = None):
        super().__init__(message, hint)
        self.status, self.retry_after = status, retry_after


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the caller's own pause applies


class Response:
    """One HTTP answer: its status, its headers (an ``email.message.Message``: ``get`` ignores case,
    ``get_all`` gives repeated ones) and its body, read once with ``read``. ``content`` holds the
    body when the client read it whole (every answer not asked for as a stream)."""

    def __init__(self, status: int, headers: Mapping[str, str] | email.message.Message,
                 body: BinaryIO | None = None, release: Callable[[bool], None] | None = None):
        self.status = status
        if isinstance(headers, email.message.Message):
            self.headers = headers
        else:
            self.headers = email.message.Message()
            for k, v in headers.items():
                self.headers[k] = v
        self.content: bytes | None = None
        self._body, self._release = body, release

    def read(self, n: int) -> bytes:
        if self._body is None:
            return b""
        chunk = self._body.read(n)
        if not chunk:
            self._finish(True)
        return chunk

    def close(self) -> None:
        """Done with the answer: its connection is reused only if its body was read to the end."""
        closed = getattr(self._body, "isclosed", None)
        self._finish(bool(closed and closed()))

    def _finish(self, whole: bool) -> None:
        release, self._release, self._body = self._release, None, None
        if release:
            release(whole)


def _origin(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    return u.scheme.lower(), u.netloc.lower()


def _where(url: str) -> str:
    """A URL as an error message shows it: the path after /v2/, no query (it may hold a signature)."""
    return urlsplit(url).path.split("/v2/", 1)[-1]


class Registry:
    """A client of the OCI distribution API over the standard library alone (``http.client``): it runs
    on the host and inside bakery's own container image alike.

    Every request is first sent anonymously; a ``401`` names what the registry wants: HTTP Basic
    (distribution with htpasswd) gets the host's login from the auth files, a ``Bearer`` challenge a
    token from the token server it names (or BAKERY_REGISTRY_TOKEN as it is), cached per repository
    and scope. Connections are kept alive and reused. Redirects of GET and HEAD (a blob served from
    storage elsewhere) are followed, without the registry's ``Authorization`` on another host."""

    def __init__(self, registry: str, tls_verify: bool | None = None):
        self.host = registry
        if tls_verify is None:
            tls_verify = not is_loopback(registry)
        self.insecure = not tls_verify
        self.prefix = "http" if self.insecure else "https"
        self.timeout = request_timeout()  # every request: connecting, and each read
        self._checked = False
        self._origin = (self.prefix, registry.lower())
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._basic: str | None = None  # "Basic ..." once the registry asked for it
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # (repo, actions) -> (token, good until)
        self._login: Login | None = None
        self._login_read = False

    def close(self) -> None:
        """Close the idle connections (the client stays usable: it connects again when needed)."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _reachable(self) -> None:
        """Fail fast, before any request, when nothing listens at the registry's address."""
        u = urlsplit(f"//{self.host}")
        try:
            port = u.port or (80 if self.insecure else 443)
            socket.create_connection((u.hostname or self.host, port), timeout=5).close()
        except (OSError, ValueError) as e:
            raise BakeryError(f"registry {self.host} is unreachable ({getattr(e, 'strerror', None) or e})",
                              "start the embedded one with 'bakery registry start', or check the address") from None
        self._checked = True

    # -- one exchange --

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context()
            if self.insecure:  # asked for (--tls-verify=false): an https URL is not verified either
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        u = urlsplit(f"//{netloc}")
        host, port = u.hostname or netloc, u.port
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._context(),
                                               blocksize=1 << 16)
        return http.client.HTTPConnection(host, port, timeout=self.timeout, blocksize=1 << 16)

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | Path | None) -> Response:
        """One HTTP exchange (no retry, auth or redirect): the transport, which tests may answer
        instead of a network. A ``Path`` body is streamed from the file."""
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise BakeryError(f"registry {self.host}: {url.split('?')[0]!r} is not an http(s) address")
        key = (u.scheme, u.netloc)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        idle = self._idle.get(key)
        conn = idle.pop() if idle else None
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._connect(*key)
            try:
                if isinstance(body, Path):  # sent as read, of the length it has (never chunked)
                    with body.open("rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        conn.request(method, target, body=f, headers={**headers, "Content-Length": str(size)})
                else:
                    conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
            except (ConnectionResetError, BrokenPipeError):  # http.client.RemoteDisconnected among them
                conn.close()
                conn = None
                if reused:  # an idle connection the server closed meanwhile: once more on a fresh one
                    reused = False
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            break
        used = conn

        def release(whole: bool) -> None:
            if whole and not resp.will_close:
                self._idle.setdefault(key, []).append(used)
            else:
                used.close()

        return Response(resp.status, resp.headers, resp, release)

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes | Path | None) -> Response:
        """One request with a time limit and a short retry of transient failures."""
        timeout = self.timeout
        for attempt in range(RETRIES + 1):
            try:
                r = self._send(method, url, headers, body)
            except TimeoutError:
                if attempt < RETRIES:
                    time.sleep(2 ** attempt)
                    continue
                raise BakeryError(f"registry {self.host} did not answer {method} {_where(url)} "
                                  f"within {timeout:g} s ({RETRIES + 1} attempts)",
                                  "check the registry; BAKERY_REGISTRY_TIMEOUT sets the limit in seconds") from None
            except ssl.SSLCertVerificationError as e:  # no retry makes a certificate good
                raise BakeryError(f"registry {self.host} is unreachable: the certificate of "
                                  f"{urlsplit(url).hostname} is not trusted ({e.verify_message})",
                                  "install its CA certificate, or pass --tls-verify=false") from None
            except (OSError, http.client.HTTPException):
                if attempt < RETRIES:
                    time.sleep(2 ** attempt)
                    continue
                where = urlsplit(url).netloc
                raise BakeryError(f"registry {self.host} is unreachable" if where.lower() == self.host.lower()
                                  else f"registry {self.host}: {urlsplit(url).hostname}, where it sent the "
                                       f"request, is unreachable",
                                  "start the embedded one with 'bakery registry start', or check the address") from None
            if r.status in (502, 503, 504) and attempt < RETRIES:
                r.close()
                time.sleep(2 ** attempt)
                continue
            return r
        raise AssertionError("unreachable")

    def _chunks(self, r: Response, size: int, what: str) -> Iterator[bytes]:
        """The body of ``r``, a timeout or a broken answer on the way an error of one line."""
        while True:
            try:
                chunk = r.read(size)
            except TimeoutError:
                r.close()
                raise BakeryError(f"registry {self.host} did not send {what} within {self.timeout:g} s",
                                  "check the registry; BAKERY_REGISTRY_TIMEOUT sets the limit in seconds") from None
            except (OSError, http.client.HTTPException) as e:
                r.close()
                raise BakeryError(f"registry {self.host}: {what} broke off ({type(e).__name__})") from None
            if not chunk:
                return
            yield chunk

    def _load(self, r: Response, limit: int, what: str) -> bytes:
        """The body of ``r``, at most ``limit`` + 1 bytes of it (more is left unread)."""
        if r.content is None:
            buf = bytearray()
            try:
                for chunk in self._chunks(r, 1 << 16, what):
                    buf += chunk
                    if len(buf) > limit:
                        break
            finally:
                r.close()
            r.content = bytes(buf[:limit + 1])
        return r.content

    # -- auth, redirects --

    def _credentials(self) -> Login | None:
        if not self._login_read:
            self._login, self._login_read = login_for(self.host), True
        return self._login

    def _auth_for(self, repo: str, write: bool) -> str | None:
        if self._basic:
            return self._basic
        now = time.monotonic()
        for actions in (("pull,push",) if write else ("pull", "pull,push")):
            token, until = self._tokens.get((repo, actions), ("", 0.0))
            if token and now < until:
                return f"Bearer {token}"
        return None

    def _authenticate(self, values: list[str], repo: str, write: bool, sent: str | None) -> bool:
        """After a 401: credentials the registry's challenge asks for, when there are any (and they are
        not the ones just refused)."""
        for scheme, params in challenges(values):
            if scheme == "bearer":
                actions = "pull,push" if write else "pull"
                got = self._bearer(params, repo, actions)
                if got is None or f"Bearer {got[0]}" == sent:
                    return False
                self._tokens[(repo, actions)] = got
                return True
            if scheme == "basic":
                login = self._credentials()
                if login is None or not (login.username or login.password):
                    return False
                basic = "Basic " + base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
                if basic == sent:
                    return False
                self._basic = basic
                return True
        return False

    def _bearer(self, params: dict[str, str], repo: str, actions: str) -> tuple[str, float] | None:
        """A token for ``repository:<repo>:<actions>``: BAKERY_REGISTRY_TOKEN as it is, else one from
        the token server the challenge names (with the host's login, if there is one)."""
        given = Settings.from_env().registry_token
        if given:
            return given, float("inf")
        realm = params.get("realm", "")
        u = urlsplit(realm)
        if u.scheme not in ("http", "https") or not u.netloc:
            return None
        login = self._credentials()
        if login and u.scheme == "http" and not (self.insecure or is_loopback(u.netloc)):
            raise BakeryError(f"registry {self.host}: its token server {u.hostname} is plain http: "
                              "the login is not sent over it", "check the registry's auth configuration")
        form = ([("service", params["service"])] if params.get("service") else []) + \
            [("scope", f"repository:{repo}:{actions}")]
        headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        body: bytes | None = None
        if login and login.identity_token:  # docker's OAuth2 refresh token
            method, url = "POST", realm
            form += [("grant_type", "refresh_token"), ("refresh_token", login.identity_token),
                     ("client_id", "bakery")]
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            method, url = "GET", realm + ("&" if u.query else "?") + urlencode(form)
            if login:
                headers["Authorization"] = "Basic " + base64.b64encode(
                    f"{login.username}:{login.password}".encode()).decode()
        r = self._exchange(method, url, headers, body)
        data = self._load(r, MAX_TOKEN_BYTES, "a token")
        if r.status != 200:
            self._fail(r, f"token for {repo} from {u.hostname}")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise BakeryError(f"registry {self.host}: its token server {u.hostname} answered no token")
        expires = doc.get("expires_in") if isinstance(doc, dict) else None
        life = float(expires) if isinstance(expires, (int, float)) and expires > 0 else 60.0
        return token, time.monotonic() + max(life - 5, 1.0)

    def _request(self, method: str, url: str, *, repo: str, headers: dict[str, str] | None = None,
                 data: bytes | Path | None = None, stream: bool = False) -> Response:
        """A registry request, authenticated as the registry asks, redirects of GET and HEAD
        followed. Unless ``stream``, the body is read (``content``, at most MAX_MANIFEST_BYTES + 1)."""
        if not self._checked:
            self._reachable()
        write = method not in ("GET", "HEAD")
        base = {"User-Agent": _USER_AGENT, **(headers or {})}
        retried, hops = False, 0
        while True:
            send = dict(base)
            mine = _origin(url) == self._origin
            auth = self._auth_for(repo, write) if mine else None  # never the registry's login elsewhere
            if auth:
                send["Authorization"] = auth
            r = self._exchange(method, url, send, data)
            if r.status == 401 and mine and not retried:
                values = r.headers.get_all("WWW-Authenticate") or []
                self._load(r, MAX_ERROR_BYTES, f"the answer to {method} {_where(url)}")
                if self._authenticate(values, repo, write, auth):
                    retried = True
                    continue
                return r
            location = r.headers.get("Location")
            if r.status in _REDIRECT and method in ("GET", "HEAD") and location:
                r.close()
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise BakeryError(f"registry {self.host}: {method} {_where(url)} was redirected more "
                                      f"than {MAX_REDIRECTS} times")
                url = urljoin(url, location)
                continue
            if not stream:
                self._load(r, MAX_MANIFEST_BYTES, f"the answer to {method} {_where(url)}")
            return r

    def _url(self, repo: str, kind: str, ref: str) -> str:
        return f"{self.prefix}://{self.host}/v2/{repo}/{kind}/{ref}"

    def _fail(self, r: Response, what: str) -> NoReturn:
        body = self._load(r, MAX_ERROR_BYTES, "the error")
        try:
            errs = json.loads(body).get("errors", [])
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)[:300]
        except (ValueError, AttributeError, TypeError, RecursionError):  # an error body of another shape
            text = body.decode("utf-8", "replace")
            detail = text[:300].splitlines()[0] if text.strip() else ""
        detail = re.sub(r"[\x00-\x1f\x7f]+", " ", detail)  # one line, whatever the registry says
        hint = (f"log in to {self.host}: its credentials are read from $REGISTRY_AUTH_FILE, the containers "
                "auth file or the docker config (e.g. 'skopeo login'), or BAKERY_REGISTRY_TOKEN") \
            if r.status == 401 else None
        raise RegistryError(f"registry {self.host}: {what} failed (HTTP {r.status}) {detail}".rstrip(), hint,
                            status=r.status, retry_after=_seconds(r.headers.get("Retry-After")))

    # -- the API --

    def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest a tag points to, or None when there is no such manifest."""
        r = self._request("HEAD", self._url(repo, "manifests", ref), repo=repo, headers={"Accept": ACCEPT})
        if r.status == 404:
            return None
        if r.status != 200:
            self._fail(r, f"HEAD {repo}:{ref}")
        return r.headers.get("Docker-Content-Digest")

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest); the digest is recomputed, never trusted."""
        r = self._request("GET", self._url(repo, "manifests", ref), repo=repo, headers={"Accept": ACCEPT})
        if r.status == 404:
            raise BakeryError(f"{self.host}/{repo}:{ref} not found", "check the reference with 'skopeo list-tags'")
        if r.status != 200:
            self._fail(r, f"GET manifest {repo}:{ref}")
        data = r.content or b""
        if len(data) > MAX_MANIFEST_BYTES:  # read no further: refused as json_object refuses it
            json_object(data, f"manifest {repo}@{ref}", BakeryError)
        digest = sha256(data)
        if ref.startswith("sha256:") and digest != ref:
            raise PlanRefused(f"manifest {repo}@{ref} does not match its digest (got {digest})")
        mt = json_object(data, f"manifest {repo}@{ref}", BakeryError).get("mediaType")
        if not isinstance(mt, str) or not mt:
            mt = r.headers.get("Content-Type", MANIFEST)
        return data, mt, digest

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        r = self._request("PUT", self._url(repo, "manifests", ref), repo=repo, data=data,
                          headers={"Content-Type": media_type})
        if r.status not in (200, 201):
            self._fail(r, f"PUT manifest {repo}:{ref}")
        return sha256(data)

    def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete the manifest ``digest`` (every tag on it goes with it); False when there was none.
        The registry must allow deletes (the embedded one does)."""
        _check_digest(digest)
        r = self._request("DELETE", self._url(repo, "manifests", digest), repo=repo)
        if r.status == 404:
            return False
        if r.status != 202:
            self._fail(r, f"DELETE manifest {repo}@{digest[:19]}")
        return True

    def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether the registry has the blob ``digest`` in ``repo`` (HEAD on it)."""
        _check_digest(digest)
        r = self._request("HEAD", self._url(repo, "blobs", digest), repo=repo)
        if r.status == 404:
            return False
        if r.status != 200:
            self._fail(r, f"HEAD blob {digest[:19]}")
        return True

    def _blob(self, repo: str, digest: str, max_size: int) -> Response:
        _check_digest(digest)
        r = self._request("GET", self._url(repo, "blobs", digest), repo=repo, stream=True)
        if r.status != 200:
            self._fail(r, f"GET blob {digest[:19]}")
        length = r.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_size:  # said at once: nothing read
            r.close()
            raise PlanRefused(f"blob {digest} is larger than {max_size} bytes")
        return r

    def get_blob(self, repo: str, digest: str, max_size: int = 64 << 20) -> bytes:
        r = self._blob(repo, digest, max_size)
        buf = bytearray()
        try:
            for chunk in self._chunks(r, 1 << 16, f"blob {digest[:19]}"):  # never more than max_size in memory
                buf += chunk
                if len(buf) > max_size:
                    raise PlanRefused(f"blob {digest} is larger than {max_size} bytes")
        finally:
            r.close()
        data = bytes(buf)
        if sha256(data) != digest:
            raise PlanRefused(f"blob {digest} does not match its digest: refused")
        return data

    def download_blob(self, repo: str, digest: str, out, max_size: int) -> int:
        """Stream a blob into the binary file ``out``, checking its size bound and its digest."""
        r = self._blob(repo, digest, max_size)
        h, n = hashlib.sha256(), 0
        try:
            for chunk in self._chunks(r, 1 << 20, f"blob {digest[:19]}"):
                n += len(chunk)
                if n > max_size:
                    raise PlanRefused(f"blob {digest} is larger than {max_size} bytes")
                h.update(chunk)
                out.write(chunk)
        finally:
            r.close()
        if "sha256:" + h.hexdigest() != digest:
            raise PlanRefused(f"blob {digest} does not match its digest: refused")
        return n

    def push_blob(self, repo: str, path: Path, media_type: str) -> dict:
        """Upload the file ``path`` as a blob (unless the registry has it); returns its descriptor.

        A monolithic upload: POST opens it, one PUT to the ``Location`` answered, with the digest,
        sends the whole file."""
        h, size = hashlib.sha256(), 0
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        digest = "sha256:" + h.hexdigest()
        desc = {"mediaType": media_type, "digest": digest, "size": size}
        if self.blob_exists(repo, digest):
            return desc
        start = f"{self.prefix}://{self.host}/v2/{repo}/blobs/uploads/"
        r = self._request("POST", start, repo=repo, data=b"")
        location = r.headers.get("Location")
        if r.status != 202 or not location:
            self._fail(r, "blob upload")
        url = urljoin(start, location)
        url += ("&" if urlsplit(url).query else "?") + urlencode({"digest": digest})
        r = self._request("PUT", url, repo=repo, data=path, headers={"Content-Type": "application/octet-stream"})
        if r.status not in (200, 201, 202):
            self._fail(r, "blob upload")
        return desc

    def referrers(self, repo: str, subject: str, artifact_type: str | None = None) -> list[dict]:
        """Referrers of ``subject``: the referrers API, else the tag-schema fallback."""
        if not _DIGEST.match(subject or ""):
            raise BakeryError(f"{subject!r} is not a sha256 digest")
        r = self._request("GET", self._url(repo, "referrers", subject), repo=repo, headers={"Accept": INDEX})
        if r.status == 200 and "json" in r.headers.get("Content-Type", ""):
            index = json_object(r.content or b"", f"referrers of {repo}@{subject}", PlanRefused)
        else:
            tag = subject.replace(":", "-")
            if self.head_manifest(repo, tag) is None:
                return []
            data, _, _ = self.get_manifest(repo, tag)
            index = json_object(data, f"referrers index {repo}:{tag}", PlanRefused)
        manifests = descriptors(index.get("manifests", []), f"referrers of {repo}@{subject}")
        return [m for m in manifests if artifact_type is None or m.get("artifactType") == artifact_type]


def _check_digest(digest: str) -> None:
    """A digest goes into a URL path: a sha256 one, nothing else (it may come from an untrusted manifest)."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise PlanRefused(f"{digest!r} is not a sha256 digest")


def push_plan(reg: Registry, repo: str, subject: dict, plan_path: Path, annotations: dict | None = None) -> str:
    """Attach ``plan_path`` to the image manifest ``subject`` (a descriptor); returns the artifact digest."""
    return attach(reg, repo, subject, PLAN_MEDIA_TYPE, plan_path, PLAN_MEDIA_TYPE, title="plan.json",
                  annotations=annotations)


def attach(reg: Registry, repo: str, subject: dict, artifact_type: str, path: Path, media_type: str, *,
           title: str, annotations: dict | None = None) -> str:
    """Attach the file ``path`` (one layer of ``media_type``) to the manifest ``subject`` (a descriptor) as
    an OCI artifact of ``artifact_type``, as ``oras attach`` does, and list it in the referrers tag
    schema; returns the artifact's digest. The descriptor in the referrers index carries the
    artifact's annotations (``org.opencontainers.image.created`` first), by which readers take the newest."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty"
        empty.write_bytes(EMPTY_BLOB)
        config = reg.push_blob(repo, empty, EMPTY)
    layer = reg.push_blob(repo, path, media_type)
    layer["annotations"] = {"org.opencontainers.image.title": title}
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": config,
        "layers": [layer],
        "subject": {"mediaType": subject["mediaType"], "digest": subject["digest"], "size": subject["size"]},
        "annotations": {"org.opencontainers.image.created": created, **(annotations or {})},
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    digest = reg.put_manifest(repo, sha256(data), data, MANIFEST)
    _add_referrer(reg, repo, subject["digest"], {
        "mediaType": MANIFEST, "digest": digest, "size": len(data),
        "artifactType": artifact_type, "annotations": manifest["annotations"],
    })
    return digest


def _add_referrer(reg: Registry, repo: str, subject: str, desc: dict) -> None:
    """Referrers tag schema: keep the index at sha256-<hex> listing every referrer."""
    tag = subject.replace(":", "-")
    if reg.head_manifest(repo, tag):
        data, _, _ = reg.get_manifest(repo, tag)
        index = json.loads(data)
    else:
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
    index["manifests"] = [m for m in index.get("manifests", []) if m.get("digest") != desc["digest"]] + [desc]
    reg.put_manifest(repo, tag, json.dumps(index, separators=(",", ":")).encode(), INDEX)


MAX_MANIFEST_BYTES = 4 << 20  # distribution's own limit for a manifest
MAX_DEPTH = 16                 # an OCI manifest nests 4 deep


def json_object(data: bytes, what: str, error: type[BakeryError] = PlanRefused) -> dict:
    """A registry's JSON answer that must be an object: any other shape is one line of ``error``."""
    if not isinstance(data, (bytes, str)) or len(data) > MAX_MANIFEST_BYTES:
        raise error(f"{what} is not a JSON object of at most {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise error(f"{what} is a JSON {type(doc).__name__}, not an object")
    stack = [(doc, 0)]
    while stack:  # bounded nesting: later code may walk it recursively
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise error(f"{what} nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return doc


def descriptors(items, what: str) -> list[dict]:
    """OCI descriptors as the plan's lookup reads them: each an object with a sha256 digest, and
    string mediaType, artifactType and annotations when present."""
    if not isinstance(items, list):
        raise PlanRefused(f"{what}: 'manifests' or 'layers' is not a list")
    for d in items:
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or not _DIGEST.match(d["digest"]):
            raise PlanRefused(f"{what}: a descriptor without a sha256 digest: {repr(d)[:80]}")
        for key in ("mediaType", "artifactType"):
            if key in d and not isinstance(d[key], str):
                raise PlanRefused(f"{what}: descriptor {d['digest']}: {key} is not a string")
        ann = d.get("annotations", {})
        if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
            raise PlanRefused(f"{what}: descriptor {d['digest']}: annotations are not strings")
    return items


def fetch_plan(reg: Registry, repo: str, subject: str) -> tuple[bytes, str]:
    """The newest plan attached to ``subject``: (plan bytes, their digest), digests checked.
    Every answer is untrusted: a shape other than OCI's is refused in one line."""
    found = reg.referrers(repo, subject, PLAN_MEDIA_TYPE)
    if not found:
        raise BakeryError(f"{reg.host}/{repo}@{subject} has no bake plan attached",
                          "is this an IR image made by 'bakery build'?")
    found.sort(key=lambda m: m.get("annotations", {}).get("org.opencontainers.image.created", ""))
    artifact = found[-1]["digest"]
    data, _, _ = reg.get_manifest(repo, artifact)
    manifest = json_object(data, f"plan artifact {artifact}")
    about = manifest.get("subject")
    if not isinstance(about, dict) or about.get("digest") != subject:
        raise PlanRefused(f"plan artifact {artifact} does not refer to {subject}")
    layers = [l for l in descriptors(manifest.get("layers", []), f"plan artifact {artifact}")
              if l.get("mediaType") == PLAN_MEDIA_TYPE]
    if len(layers) != 1:
        raise PlanRefused(f"plan artifact {artifact} has {len(layers)} plan layers, expected 1")
    plan = reg.get_blob(repo, layers[0]["digest"])
    return plan, layers[0]["digest"]
