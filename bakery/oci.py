"""OCI registry side: references, manifests, and the bake plan as an artifact.

The plan is pushed with oras as an OCI artifact whose ``subject`` is the IR
image manifest. CNCF distribution has no referrers API, so the OCI 1.1
referrers *tag schema* fallback is kept up to date as well: an image index at
tag ``sha256-<hex of the subject digest>`` listing the referrers. Lookups try
the referrers API first and fall back to that tag, as ``oras discover`` does.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bakery import PLAN_MEDIA_TYPE
from bakery.config import Settings
from bakery.errors import BakeryError, PlanRefused

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
ACCEPT = ", ".join([MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST])

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


def _auth_files() -> list[str]:
    """The standard containers auth file, then the docker config (read by oras)."""
    candidates = [os.environ.get("REGISTRY_AUTH_FILE")]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/containers/{os.getuid()}"
    candidates.append(os.path.join(runtime, "containers", "auth.json"))
    candidates.append(os.path.expanduser("~/.config/containers/auth.json"))
    return [c for c in candidates if c and os.path.exists(c)]


RETRIES = 2  # after the first attempt, for timeouts, refused connections and 502/503/504


def request_timeout() -> float:
    """Seconds a registry may take to answer one request (BAKERY_REGISTRY_TIMEOUT, default 60)."""
    return Settings.from_env().registry_timeout


def _with_timeout(request, timeout: float):
    def bounded(method, url, **kw):
        kw.setdefault("timeout", timeout)
        return request(method, url, **kw)
    return bounded


class Registry:
    """A thin client over oras-py's provider: auth and blob uploads are oras's."""

    def __init__(self, registry: str, tls_verify: bool | None = None):
        import oras.provider  # host-side only: not needed inside the IR image

        self.host = registry
        if tls_verify is None:
            tls_verify = not is_loopback(registry)
        self.insecure = not tls_verify
        self.oras = oras.provider.Registry(hostname=registry, insecure=self.insecure, tls_verify=tls_verify)
        self.prefix = "http" if self.insecure else "https"
        self.timeout = request_timeout()  # every request, oras's own uploads included
        self.oras.session.request = _with_timeout(self.oras.session.request, self.timeout)
        self._authed: set[str] = set()

    def _container(self, repo: str, ref: str = "latest"):
        import oras.container

        c = oras.container.Container(f"{self.host}/{repo}:{ref}" if not ref.startswith("sha256:")
                                     else f"{self.host}/{repo}@{ref}")
        if not getattr(self, "_checked", False):
            self._reachable()
            self._basic_if_asked()
        if repo not in self._authed:
            self.oras.auth.load_configs(c, configs=_auth_files() or None)
            self._authed.add(repo)
        return c

    def _reachable(self) -> None:
        """Fail fast: oras-py retries a refused connection with backoff for minutes."""
        import socket

        host, _, port_text = self.host.rpartition(":") if self.host.count(":") == 1 else (self.host, "", "")
        port = int(port_text) if port_text.isdigit() else (80 if self.insecure else 443)
        try:
            socket.create_connection((host or self.host, port), timeout=5).close()
        except OSError as e:
            raise BakeryError(f"registry {self.host} is unreachable ({e.strerror or e})",
                              "start the embedded one with 'bakery registry start', or check the address") from None
        self._checked = True

    def _basic_if_asked(self) -> None:
        """A registry that asks for HTTP Basic auth (distribution with htpasswd, as `bakery k8s serve`
        deploys it): oras's token backend would take the Basic realm for a token server's address."""
        import oras.auth
        import requests

        try:
            r = self.oras.session.get(f"{self.prefix}://{self.host}/v2/", timeout=self.timeout,
                                      verify=self.oras._tls_verify)
        except requests.exceptions.RequestException:
            return  # the request itself will say what is wrong
        if r.status_code == 401 and r.headers.get("WWW-Authenticate", "").lower().startswith("basic"):
            backend = oras.auth.get_auth_backend("basic", self.oras.session, insecure=self.insecure,
                                                 tls_verify=self.oras._tls_verify)
            backend._basic_auth = getattr(backend, "_basic_auth", None)  # no login: a 401, not an AttributeError
            self.oras.auth = backend
            self._authed.clear()  # credentials are loaded again, into the basic backend

    def _request(self, method: str, url: str, **kw):
        """One registry request with a time limit and a short retry of transient failures.

        oras-py's own retry (5 attempts, 2 minutes of backoff, no time limit per request) would let
        a registry that accepts connections and never answers hang a bake for ever."""
        import requests

        if not getattr(self, "_checked", False):
            self._reachable()
        timeout = self.timeout
        once = getattr(type(self.oras).do_request, "__wrapped__", type(self.oras).do_request)
        for attempt in range(RETRIES + 1):
            try:
                r = once(self.oras, url, method, **kw)
            except requests.exceptions.Timeout:
                if attempt < RETRIES:
                    time.sleep(2 ** attempt)
                    continue
                raise BakeryError(f"registry {self.host} did not answer {method} {url.split('/v2/', 1)[-1]} "
                                  f"within {timeout:g} s ({RETRIES + 1} attempts)",
                                  "check the registry; BAKERY_REGISTRY_TIMEOUT sets the limit in seconds") from None
            except requests.exceptions.ConnectionError:
                if attempt < RETRIES:
                    time.sleep(2 ** attempt)
                    continue
                raise BakeryError(f"registry {self.host} is unreachable",
                                  "start the embedded one with 'bakery registry start', or check the address") from None
            if r.status_code in (502, 503, 504) and attempt < RETRIES:
                time.sleep(2 ** attempt)
                continue
            return r

    def _url(self, repo: str, kind: str, ref: str) -> str:
        return f"{self.prefix}://{self.host}/v2/{repo}/{kind}/{ref}"

    def _fail(self, r, what: str):
        try:
            errs = r.json().get("errors", [])
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)[:300]
        except (ValueError, AttributeError, TypeError, RecursionError):  # an error body of another shape
            detail = r.text[:300].splitlines()[0] if r.text.strip() else ""
        hint = (f"log in to {self.host}: its credentials are read from $REGISTRY_AUTH_FILE, the containers "
                "auth file or the docker config (e.g. 'skopeo login')") if r.status_code == 401 else None
        raise BakeryError(f"registry {self.host}: {what} failed (HTTP {r.status_code}) {detail}".rstrip(), hint)

    def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest a tag points to, or None when there is no such manifest."""
        self._container(repo, ref)
        r = self._request("HEAD", self._url(repo, "manifests", ref), headers={"Accept": ACCEPT})
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            self._fail(r, f"HEAD {repo}:{ref}")
        return r.headers.get("Docker-Content-Digest")

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest); the digest is recomputed, never trusted."""
        self._container(repo, ref)
        r = self._request("GET", self._url(repo, "manifests", ref), headers={"Accept": ACCEPT})
        if r.status_code == 404:
            raise BakeryError(f"{self.host}/{repo}:{ref} not found", "check the reference with 'skopeo list-tags'")
        if r.status_code != 200:
            self._fail(r, f"GET manifest {repo}:{ref}")
        data = r.content
        digest = sha256(data)
        if ref.startswith("sha256:") and digest != ref:
            raise PlanRefused(f"manifest {repo}@{ref} does not match its digest (got {digest})")
        mt = json_object(data, f"manifest {repo}@{ref}", BakeryError).get("mediaType")
        if not isinstance(mt, str) or not mt:
            mt = r.headers.get("Content-Type", MANIFEST)
        return data, mt, digest

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        self._container(repo, ref)
        r = self._request("PUT", self._url(repo, "manifests", ref), data=data,
                          headers={"Content-Type": media_type})
        if r.status_code not in (200, 201):
            self._fail(r, f"PUT manifest {repo}:{ref}")
        return sha256(data)

    def get_blob(self, repo: str, digest: str, max_size: int = 64 << 20) -> bytes:
        self._container(repo, digest)
        r = self._request("GET", self._url(repo, "blobs", digest), stream=True)
        if r.status_code != 200:
            self._fail(r, f"GET blob {digest[:19]}")
        buf = bytearray()
        for chunk in r.iter_content(1 << 16):  # never more than max_size in memory
            buf += chunk
            if len(buf) > max_size:
                r.close()
                raise PlanRefused(f"blob {digest} is larger than {max_size} bytes")
        data = bytes(buf)
        if sha256(data) != digest:
            raise PlanRefused(f"blob {digest} does not match its digest: refused")
        return data

    def download_blob(self, repo: str, digest: str, out, max_size: int) -> int:
        """Stream a blob into the binary file ``out``, checking its size bound and its digest."""
        self._container(repo, digest)
        r = self._request("GET", self._url(repo, "blobs", digest), stream=True)
        if r.status_code != 200:
            self._fail(r, f"GET blob {digest[:19]}")
        h, n = hashlib.sha256(), 0
        for chunk in r.iter_content(1 << 20):
            n += len(chunk)
            if n > max_size:
                r.close()
                raise PlanRefused(f"blob {digest} is larger than {max_size} bytes")
            h.update(chunk)
            out.write(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise PlanRefused(f"blob {digest} does not match its digest: refused")
        return n

    def push_blob(self, repo: str, path: Path, media_type: str) -> dict:
        data = path.read_bytes()
        desc = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
        c = self._container(repo)
        if not self.oras.blob_exists(desc, c):
            r = self.oras.upload_blob(str(path), c, desc)
            if r.status_code not in (200, 201, 202):
                self._fail(r, "blob upload")
        return desc

    def referrers(self, repo: str, subject: str, artifact_type: str | None = None) -> list[dict]:
        """Referrers of ``subject``: the referrers API, else the tag-schema fallback."""
        if not _DIGEST.match(subject or ""):
            raise BakeryError(f"{subject!r} is not a sha256 digest")
        self._container(repo, subject)
        r = self._request("GET", self._url(repo, "referrers", subject), headers={"Accept": INDEX})
        if r.status_code == 200 and "json" in r.headers.get("Content-Type", ""):
            index = json_object(r.content, f"referrers of {repo}@{subject}", PlanRefused)
        else:
            tag = subject.replace(":", "-")
            if self.head_manifest(repo, tag) is None:
                return []
            data, _, _ = self.get_manifest(repo, tag)
            index = json_object(data, f"referrers index {repo}:{tag}", PlanRefused)
        manifests = descriptors(index.get("manifests", []), f"referrers of {repo}@{subject}")
        return [m for m in manifests if artifact_type is None or m.get("artifactType") == artifact_type]


def push_plan(reg: Registry, repo: str, subject: dict, plan_path: Path, annotations: dict | None = None) -> str:
    """Attach ``plan_path`` to the image manifest ``subject`` (a descriptor); returns the artifact digest."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty"
        empty.write_bytes(EMPTY_BLOB)
        config = reg.push_blob(repo, empty, EMPTY)
    layer = reg.push_blob(repo, plan_path, PLAN_MEDIA_TYPE)
    layer["annotations"] = {"org.opencontainers.image.title": "plan.json"}
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": PLAN_MEDIA_TYPE,
        "config": config,
        "layers": [layer],
        "subject": {"mediaType": subject["mediaType"], "digest": subject["digest"], "size": subject["size"]},
        "annotations": {"org.opencontainers.image.created": created, **(annotations or {})},
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    digest = reg.put_manifest(repo, sha256(data), data, MANIFEST)
    _add_referrer(reg, repo, subject["digest"], {
        "mediaType": MANIFEST, "digest": digest, "size": len(data),
        "artifactType": PLAN_MEDIA_TYPE, "annotations": manifest["annotations"],
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
