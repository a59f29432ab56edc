"""bakery.oci.Registry over HTTP, against real registries: CNCF distribution (Debian's docker-registry)
on loopback, anonymous, with htpasswd (HTTP Basic) and with token auth (a token server here, which
signs JWTs as distribution wants them, with openssl). Small HTTP servers answer what distribution
never does: redirects to another host, relative upload locations, a 503."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import REPO

from bakery import PLAN_MEDIA_TYPE, oci
from bakery.errors import BakeryError, PlanRefused

needs_registry = pytest.mark.skipif(not shutil.which("docker-registry"), reason="needs docker-registry")


@pytest.fixture(autouse=True)
def no_logins_of_this_machine(tmp_path, monkeypatch):
    """Only the auth files a test writes: none of the user's own."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "none.json"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("BAKERY_REGISTRY_TOKEN", raising=False)


def _start(root: Path, monkeypatch, env: dict[str, str] | None = None):
    """A distribution registry on a free loopback port, configured by REGISTRY_* variables."""
    from bakery.images import registry as registrymod

    auth_file = os.environ.pop("REGISTRY_AUTH_FILE", None)  # distribution would read it as its auth.file
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    emb = registrymod.Embedded(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        addr = emb.start(port=0)
    finally:
        for k in env or {}:
            monkeypatch.delenv(k)
        if auth_file is not None:
            os.environ["REGISTRY_AUTH_FILE"] = auth_file
    return emb, addr


@pytest.fixture
def plain(tmp_path, monkeypatch):
    emb, addr = _start(tmp_path / "reg", monkeypatch)
    yield addr, tmp_path / "reg" / "storage"
    emb.stop()


def _auth_file(path: Path, key: str, user: str, password: str, **extra) -> Path:
    entry = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode(), **extra}
    path.write_text(json.dumps({"auths": {key: entry}}))
    return path


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _image(reg: oci.Registry, repo: str, tmp_path: Path, layer: bytes = b"layer " * 1000) -> tuple[str, bytes, dict]:
    """config + one layer + manifest pushed at repo:1.0: (manifest digest, its bytes, the layer descriptor)."""
    cfg = reg.push_blob(repo, _file(tmp_path, "config", b'{"rootfs": {"diff_ids": []}}'),
                        "application/vnd.oci.image.config.v1+json")
    lay = reg.push_blob(repo, _file(tmp_path, "layer", layer), "application/vnd.oci.image.layer.v1.tar")
    data = json.dumps({"schemaVersion": 2, "mediaType": oci.MANIFEST, "config": cfg, "layers": [lay]}).encode()
    return reg.put_manifest(repo, "1.0", data, oci.MANIFEST), data, lay


def _round_trip(reg: oci.Registry, repo: str, tmp_path: Path) -> None:
    blob = b"bakery " * 5000
    digest = oci.sha256(blob)
    assert not reg.blob_exists(repo, digest)
    desc = reg.push_blob(repo, _file(tmp_path, "blob", blob), "application/octet-stream")
    assert desc == {"mediaType": "application/octet-stream", "digest": digest, "size": len(blob)}
    assert reg.blob_exists(repo, digest)
    assert reg.push_blob(repo, _file(tmp_path, "blob", blob), "application/octet-stream") == desc  # there: skipped
    assert reg.get_blob(repo, digest) == blob
    out = io.BytesIO()
    assert reg.download_blob(repo, digest, out, max_size=len(blob)) == len(blob) and out.getvalue() == blob
    mdigest, mdata, _ = _image(reg, repo, tmp_path)
    assert reg.head_manifest(repo, "1.0") == mdigest and reg.head_manifest(repo, "2.0") is None
    assert reg.get_manifest(repo, "1.0") == (mdata, oci.MANIFEST, mdigest)
    assert reg.get_manifest(repo, mdigest) == (mdata, oci.MANIFEST, mdigest)
    plan = _file(tmp_path, "plan.json", b'{"schemaVersion": 1}')
    art = oci.push_plan(reg, repo, {"mediaType": oci.MANIFEST, "digest": mdigest, "size": len(mdata)}, plan)
    assert [r["digest"] for r in reg.referrers(repo, mdigest, PLAN_MEDIA_TYPE)] == [art]
    assert oci.fetch_plan(reg, repo, mdigest) == (plan.read_bytes(), oci.sha256(plan.read_bytes()))


# -- anonymous ------------------------------------------------------------------------------------------

@needs_registry
def test_round_trip_on_a_registry_without_auth(plain, tmp_path):
    addr, _ = plain
    reg = oci.Registry(addr)
    assert (reg.host, reg.insecure, reg.prefix) == (addr, True, "http")
    _round_trip(reg, "app/one", tmp_path)
    assert sum(len(c) for c in reg._idle.values()) == 1, "one kept-alive connection, reused for every request"


@needs_registry
def test_a_blob_over_its_size_bound_or_not_matching_its_digest_is_refused(plain, tmp_path):
    """The registry's storage altered under it (same sizes): what it serves is checked, not trusted."""
    addr, storage = plain
    reg = oci.Registry(addr)
    mdigest, mdata, layer = _image(reg, "app/two", tmp_path)
    size = layer["size"]
    with pytest.raises(PlanRefused, match=f"larger than {size - 1} bytes"):
        reg.get_blob("app/two", layer["digest"], max_size=size - 1)
    with pytest.raises(PlanRefused, match=f"larger than {size - 1} bytes"):
        reg.download_blob("app/two", layer["digest"], io.BytesIO(), max_size=size - 1)
    blobs = storage / "docker/registry/v2/blobs/sha256"
    data = blobs / layer["digest"][7:9] / layer["digest"][7:] / "data"
    data.write_bytes(b"X" * size)
    with pytest.raises(PlanRefused, match="does not match its digest"):
        reg.get_blob("app/two", layer["digest"])
    with pytest.raises(PlanRefused, match="does not match its digest"):
        reg.download_blob("app/two", layer["digest"], io.BytesIO(), max_size=size)
    mfile = blobs / mdigest[7:9] / mdigest[7:] / "data"
    mfile.write_bytes(mdata.replace(b'"schemaVersion": 2', b'"schemaVersion":2 '))  # the same, but other bytes
    with pytest.raises(PlanRefused, match="does not match its digest"):
        reg.get_manifest("app/two", mdigest)
    with pytest.raises(PlanRefused, match="not a sha256 digest"):
        reg.get_blob("app/two", "sha256:../../x")


# -- HTTP Basic (htpasswd) ---------------------------------------------------------------------------------

@pytest.fixture
def htpasswd(tmp_path, monkeypatch):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt, as distribution's htpasswd wants: Debian's libxcrypt has it

    salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)  # cost 4: each request is checked, quickly
    (tmp_path / "htpasswd").write_text("bob:" + crypt.crypt("s3cret", salt) + "\n")
    emb, addr = _start(tmp_path / "reg", monkeypatch, {
        "REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "bakery",
        "REGISTRY_AUTH_HTPASSWD_PATH": str(tmp_path / "htpasswd")})
    yield addr
    emb.stop()


@needs_registry
@pytest.mark.parametrize("key", ["{addr}", "https://{addr}", "http://{addr}/v1/"])
def test_basic_auth_with_the_login_of_the_auth_file(htpasswd, tmp_path, monkeypatch, key, caplog):
    caplog.set_level("DEBUG")
    auth = _auth_file(tmp_path / "auth.json", key.format(addr=htpasswd), "bob", "s3cret")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    _round_trip(oci.Registry(htpasswd), "app/basic", tmp_path)
    assert "s3cret" not in caplog.text and base64.b64encode(b"bob:s3cret").decode() not in caplog.text


@needs_registry
def test_basic_auth_from_the_docker_config_and_a_refused_login(htpasswd, tmp_path, monkeypatch):
    docker = tmp_path / "docker"
    docker.mkdir()
    _auth_file(docker / "config.json", htpasswd, "bob", "s3cret")
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    assert oci.Registry(htpasswd).head_manifest("app/x", "1.0") is None
    for login in (None, "wrong-password"):
        if login:
            _auth_file(docker / "config.json", htpasswd, "bob", login)
        else:
            monkeypatch.delenv("DOCKER_CONFIG")
        with pytest.raises(BakeryError, match=r"HEAD app/x:1.0 failed \(HTTP 401\)") as e:
            oci.Registry(htpasswd).head_manifest("app/x", "1.0")
        assert e.value.hint.startswith(f"log in to {htpasswd}")
        assert "wrong-password" not in str(e.value) + e.value.hint


# -- token auth ----------------------------------------------------------------------------------------

SERVICE, ISSUER = "bakery-test", "bakery-test-issuer"


class TokenServer:
    """A token server as distribution's token auth wants one: JWTs signed RS256 by a key whose
    certificate the registry trusts (x5c). A login (bob:s3cret, or the refresh token) gets the
    actions it asks for; anyone else a token for nothing."""

    def __init__(self, root: Path):
        root.mkdir()
        self.key, self.cert = root / "key.pem", root / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "1", "-subj", "/CN=bakery test tokens"],
                       check=True, capture_output=True)
        self.x5c = base64.b64encode(ssl.PEM_cert_to_DER_cert(self.cert.read_text())).decode()
        self.seen: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                q = parse_qs(urlsplit(self.path).query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    if base64.b64decode(auth[6:]) != b"bob:s3cret":
                        return self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]})
                    user = "bob"
                server.seen.append({"method": "GET", "user": user, "service": q.get("service"), "scope": q.get("scope")})
                self._answer(200, {"token": server.token(q.get("scope", []), user)})

            def do_POST(self):
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                server.seen.append({"method": "POST", "grant": form.get("grant_type"), "service": form.get("service"),
                                    "scope": form.get("scope")})
                if form.get("refresh_token") != ["refresh-me"]:
                    return self._answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                self._answer(200, {"access_token": server.token(form.get("scope", []), "bob"), "expires_in": 300})

            def _answer(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, scopes: list[str], user: str | None) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",") if user else []})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": str(uuid.uuid4()), "access": access}
        head = b64(json.dumps({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}).encode())
        signing = f"{head}.{b64(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                             capture_output=True, check=True).stdout
        return f"{signing}.{b64(sig)}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def token_auth(tmp_path, monkeypatch):
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    tokens = TokenServer(tmp_path / "tokens")
    emb, addr = _start(tmp_path / "reg", monkeypatch, {
        "REGISTRY_AUTH": "token", "REGISTRY_AUTH_TOKEN_REALM": tokens.realm,
        "REGISTRY_AUTH_TOKEN_SERVICE": SERVICE, "REGISTRY_AUTH_TOKEN_ISSUER": ISSUER,
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(tokens.cert)})
    yield addr, tokens
    emb.stop()
    tokens.stop()


@needs_registry
def test_token_auth_gets_a_token_per_repository_and_scope_with_the_login(token_auth, tmp_path, monkeypatch):
    addr, tokens = token_auth
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(_auth_file(tmp_path / "auth.json", addr, "bob", "s3cret")))
    reg = oci.Registry(addr)
    mdigest, mdata, layer = _image(reg, "tok/app", tmp_path)
    assert reg.get_manifest("tok/app", "1.0") == (mdata, oci.MANIFEST, mdigest)
    assert reg.get_blob("tok/app", layer["digest"]).startswith(b"layer ")
    # A read asks for pull, the first write for pull,push; each token is then reused.
    assert tokens.seen == [
        {"method": "GET", "user": "bob", "service": [SERVICE], "scope": ["repository:tok/app:pull"]},
        {"method": "GET", "user": "bob", "service": [SERVICE], "scope": ["repository:tok/app:pull,push"]}]
    _round_trip(reg, "tok/other", tmp_path)
    assert [s["scope"] for s in tokens.seen[2:]] == [["repository:tok/other:pull"], ["repository:tok/other:pull,push"]]


@needs_registry
def test_token_auth_without_a_login_or_with_a_wrong_one_is_told_to_log_in(token_auth, tmp_path, monkeypatch):
    addr, tokens = token_auth
    with pytest.raises(BakeryError, match=r"HEAD tok/app:1.0 failed \(HTTP 401\)") as e:  # a token for nothing
        oci.Registry(addr).head_manifest("tok/app", "1.0")
    assert e.value.hint.startswith(f"log in to {addr}") and tokens.seen[-1]["user"] is None
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(_auth_file(tmp_path / "auth.json", addr, "bob", "guess")))
    with pytest.raises(BakeryError, match=r"token for tok/app from 127.0.0.1 failed \(HTTP 401\)") as e:
        oci.Registry(addr).head_manifest("tok/app", "1.0")
    assert e.value.hint.startswith(f"log in to {addr}") and "guess" not in str(e.value) + e.value.hint


@needs_registry
def test_token_auth_with_bakery_registry_token_or_a_refresh_token(token_auth, tmp_path, monkeypatch):
    addr, tokens = token_auth
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(_auth_file(tmp_path / "auth.json", addr, "bob", "s3cret")))
    mdigest, _, _ = _image(oci.Registry(addr), "tok/app", tmp_path)
    asked = len(tokens.seen)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("BAKERY_REGISTRY_TOKEN", tokens.token(["repository:tok/app:pull"], "bob"))
    assert oci.Registry(addr).head_manifest("tok/app", "1.0") == mdigest
    assert len(tokens.seen) == asked, "the token is sent as it is: no token server asked"
    monkeypatch.setenv("BAKERY_REGISTRY_TOKEN", tokens.token(["repository:tok/elsewhere:pull"], "bob"))
    with pytest.raises(BakeryError, match=r"HTTP 401"):
        oci.Registry(addr).head_manifest("tok/app", "1.0")
    monkeypatch.delenv("BAKERY_REGISTRY_TOKEN")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(_auth_file(tmp_path / "auth.json", addr, "<token>", "",
                                                            identitytoken="refresh-me")))
    assert oci.Registry(addr).head_manifest("tok/app", "1.0") == mdigest
    assert tokens.seen[-1] == {"method": "POST", "grant": ["refresh_token"], "service": [SERVICE],
                               "scope": ["repository:tok/app:pull"]}


# -- what distribution never answers ------------------------------------------------------------------

class Fake:
    """A registry of blobs in memory, asking for HTTP Basic (bob:s3cret), whose uploads answer a
    relative Location, with or without a query; a blob may be redirected to storage on another
    host (``localhost`` for ``127.0.0.1``), or redirected for ever; a manifest HEAD answers 503 once.
    ``drop``: every connection is closed after its answer without saying so (``Connection: close``),
    as a server closes idle ones: the client's kept-alive connection is found closed at the next request."""

    def __init__(self, location_query: str = "", drop: bool = False):
        self.blobs: dict[str, bytes] = {}
        self.storage_auth: list[str | None] = []
        self.puts: list[str] = []
        self.heads = 0
        fake = self

        class Registry(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                self.close_connection = drop

            def _authed(self):
                if self.headers.get("Authorization") == "Basic " + base64.b64encode(b"bob:s3cret").decode():
                    return True
                self._answer(401, b'{"errors": [{"code": "UNAUTHORIZED", "message": "who?"}]}',
                             [("WWW-Authenticate", 'Basic realm="fake"')])
                return False

            def do_HEAD(self):
                if not self._authed():
                    return
                path = urlsplit(self.path).path
                if "/manifests/" in path:
                    fake.heads += 1
                    return self._answer(503 if fake.heads == 1 else 404)
                self._answer(200 if path.rsplit("/", 1)[-1] in fake.blobs else 404)

            def do_GET(self):
                if not self._authed():
                    return
                digest = self.path.rsplit("/", 1)[-1]
                if digest == "sha256:" + "0" * 64:
                    return self._answer(302, headers=[("Location", self.path)])
                self._answer(307, headers=[("Location", f"http://localhost:{fake.storage_port}/data/{digest}")])

            def do_POST(self):
                if self._authed():
                    self._answer(202, headers=[("Location", f"/v2/fake/blobs/uploads/{uuid.uuid4()}{location_query}")])

            def do_PUT(self):
                if not self._authed():
                    return
                fake.puts.append(self.path)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                (digest,) = parse_qs(urlsplit(self.path).query)["digest"]
                if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                    return self._answer(400, b'{"errors": [{"code": "DIGEST_INVALID", "message": "no"}]}')
                fake.blobs[digest] = body
                self._answer(201)

        class Storage(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.storage_auth.append(self.headers.get("Authorization"))
                body = fake.blobs.get(self.path.rsplit("/", 1)[-1], b"")
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (Registry, Storage)]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.addr = f"127.0.0.1:{self.servers[0].server_address[1]}"
        self.storage_port = self.servers[1].server_address[1]

    def stop(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.mark.parametrize("query, drop", [("", False), ("?_state=abc", True)])
def test_relative_upload_location_redirects_to_storage_and_a_retried_503(tmp_path, monkeypatch, query, drop):
    fake = Fake(query, drop)
    slept: list[float] = []
    monkeypatch.setattr(oci.time, "sleep", slept.append)  # the client's retries, counted (and not waited for)
    try:
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(_auth_file(tmp_path / "auth.json", fake.addr, "bob", "s3cret")))
        reg = oci.Registry(fake.addr)
        blob = b"stored elsewhere " * 100
        desc = reg.push_blob("fake", _file(tmp_path, "blob", blob), "application/octet-stream")
        (put,) = fake.puts
        assert put.startswith("/v2/fake/blobs/uploads/") and put.endswith(f"{query}{'&' if query else '?'}digest="
                                                                        + desc["digest"].replace(":", "%3A"))
        assert reg.blob_exists("fake", desc["digest"])
        assert reg.get_blob("fake", desc["digest"]) == blob
        assert fake.storage_auth == [None], "the registry's login went to another host"
        with pytest.raises(BakeryError, match="redirected more than 5 times"):
            reg.get_blob("fake", "sha256:" + "0" * 64)
        assert reg.head_manifest("fake", "1.0") is None and fake.heads == 2  # a 503, then the answer
        assert slept == [1], "one retry, of the 503: a kept-alive connection found closed is not a failure"
    finally:
        fake.stop()


# -- no network ------------------------------------------------------------------------------------

def test_challenges_and_auth_file_keys_are_read_as_docker_reads_them():
    assert oci.challenges(['Bearer realm="https://auth.example/token",service="reg.example",'
                           'scope="repository:a/b:pull,push"']) == [
        ("bearer", {"realm": "https://auth.example/token", "service": "reg.example",
                    "scope": "repository:a/b:pull,push"})]
    assert oci.challenges(['Basic realm="a \\"quoted\\" realm", charset=UTF-8', "Negotiate"]) == [
        ("basic", {"realm": 'a "quoted" realm', "charset": "UTF-8"}), ("negotiate", {})]
    assert oci.challenges(['"', "=,=", ""]) == []
    for key in ("reg.example:5000", "https://reg.example:5000", "https://reg.example:5000/v1/", "REG.example:5000/"):
        assert oci._auth_key(key) == "reg.example:5000"


def test_the_login_comes_from_the_first_auth_file_that_has_one(tmp_path, monkeypatch):
    docker = tmp_path / "docker"
    docker.mkdir()
    _auth_file(docker / "config.json", "reg.example", "docker", "pw1")
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    (tmp_path / "home" / ".config" / "containers").mkdir(parents=True)
    _auth_file(tmp_path / "home" / ".config" / "containers" / "auth.json", "other.example", "podman", "pw2")
    assert oci.login_for("reg.example") == oci.Login("docker", "pw1")
    assert oci.login_for("other.example") == oci.Login("podman", "pw2")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(_auth_file(tmp_path / "a.json", "https://reg.example/v1/", "x", "pw3")))
    assert oci.login_for("reg.example") == oci.Login("x", "pw3") and "pw3" not in repr(oci.login_for("reg.example"))
    (tmp_path / "a.json").write_text("{not json")
    assert oci.login_for("reg.example") == oci.Login("docker", "pw1")  # a broken file is skipped
    assert oci.login_for("nowhere.example") is None


def test_the_client_imports_the_standard_library_alone():
    """It runs in bakery's own container image, where only Debian's python3 is installed."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bakery.oci; print(sorted("
            "{m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'bakery', '__main__'}))")
    # -S: no site-packages on the path at all (nor the venv's .pth hooks), as in the image
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
