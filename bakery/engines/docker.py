"""The Docker API engine: build, bake and run through a Docker-compatible daemon.

Speaks the Docker Engine API with the ``docker`` Python SDK, so it works with
Docker itself and with podman's API service (``podman system service``).
Recipes and commands are the same as with buildah; see docs/engines.md for
what differs (annotations become labels, TLS and credentials belong to the
daemon).

The daemon is found at ``$DOCKER_HOST``, else ``/var/run/docker.sock``, else
podman's ``/run/podman/podman.sock`` (and the rootless one under
``$XDG_RUNTIME_DIR``). Every failure the user can act on is a
:class:`BakeryError` that names the engine and what to do.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from bakery import oci, safefs
from bakery.engines.base import SANDBOX_USER, ContainerEngine
from bakery.errors import BakeryError, CommandFailed

DEFAULT_SOCKETS = ("unix:///var/run/docker.sock", "unix:///run/podman/podman.sock")
# Docker 19.03 / podman 3: every endpoint used here (multi-stage builds with
# labels, archives, commit with changes, import with changes).
MIN_API_VERSION = "1.40"
HINT_START = ("start Docker, or podman's API service ('podman system service --time=0'), or point DOCKER_HOST "
              "at a running daemon; or use --engine buildah")


def _sdk():
    try:
        import docker
    except ImportError:
        raise BakeryError("the docker engine needs the docker Python SDK",
                          "install it with: pip install docker (or --engine buildah)") from None
    return docker


def candidate_sockets() -> list[str]:
    """Where to look for a daemon: $DOCKER_HOST alone when it is set."""
    if os.environ.get("DOCKER_HOST"):
        return [os.environ["DOCKER_HOST"]]
    found = list(DEFAULT_SOCKETS)
    if os.environ.get("XDG_RUNTIME_DIR") and os.geteuid() != 0:
        found.append(f"unix://{os.environ['XDG_RUNTIME_DIR']}/podman/podman.sock")
    return found


def _ping(url: str, timeout: float = 3) -> bool:
    if url.startswith("unix://") and not os.path.exists(url[len("unix://"):]):
        return False
    try:
        docker = _sdk()
        kwargs = _client_kwargs(url)
        api = docker.APIClient(version=docker.constants.MINIMUM_DOCKER_API_VERSION, timeout=timeout, **kwargs)
        try:
            return bool(api.ping())
        finally:
            api.close()
    except Exception:
        return False


def socket_answers() -> str | None:
    """The first daemon address that answers a ping, or None (for the automatic engine choice)."""
    return next((url for url in candidate_sockets() if _ping(url)), None)


def _client_kwargs(url: str) -> dict:
    """base_url, plus TLS from DOCKER_TLS_VERIFY/DOCKER_CERT_PATH when the URL is $DOCKER_HOST."""
    if url == os.environ.get("DOCKER_HOST"):
        kwargs = _sdk().utils.kwargs_from_env()
        kwargs["base_url"] = url
        return kwargs
    return {"base_url": url}


class _StreamReader(io.RawIOBase):
    """A file over the SDK's chunk iterator, so an archive is read as a stream, never whole."""

    def __init__(self, chunks):
        self._it, self._buf = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


class _Lines:
    """Chunks of text in, whole lines out: to the log file, on_line and a tail kept for errors."""

    def __init__(self, log: Path | None, on_line: Callable[[str], None] | None):
        self.logf = open(log, "a", encoding="utf-8", errors="replace") if log else None
        self.on_line = on_line
        self.tail: deque[str] = deque(maxlen=40)
        self.buf = ""

    def feed(self, text: str) -> None:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        line = line.rstrip("\r")
        self.tail.append(line)
        if self.logf:
            self.logf.write(line + "\n")
        if self.on_line:
            self.on_line(line)

    def close(self) -> None:
        if self.buf:
            self._line(self.buf)
            self.buf = ""
        if self.logf:
            self.logf.close()
            self.logf = None

    def text(self) -> str:
        return "\n".join(self.tail)


LOG_GRACE = 10.0  # seconds a log stream may stay open after its container has exited


class DockerEngine(ContainerEngine):
    """A Docker-compatible daemon through the Docker Engine API (Docker, or podman's API service)."""

    name = "docker"

    def __init__(self, base_url: str | None = None):
        docker = _sdk()
        self._errors = docker.errors
        urls = [base_url] if base_url else candidate_sockets()
        url = next((u for u in urls if _ping(u)), None)
        if url is None:
            raise BakeryError(f"docker engine: no daemon answers at {' or '.join(urls)}", HINT_START)
        self.url = url
        try:
            self.client = docker.DockerClient(version="auto", timeout=30, **_client_kwargs(url))
            version = self.client.version()
        except docker.errors.DockerException as e:
            raise BakeryError(f"docker engine: the daemon at {url} does not answer the API: {e}", HINT_START) from None
        self.api = self.client.api
        self.api.timeout = None  # builds and bakes may print nothing for minutes
        self.api_version = version.get("ApiVersion", "0")
        if _version_tuple(self.api_version) < _version_tuple(MIN_API_VERSION):
            raise BakeryError(
                f"docker engine: the daemon at {url} speaks Docker API {self.api_version}, bakery needs "
                f"{MIN_API_VERSION} or newer",
                "upgrade the daemon (Docker 19.03 or newer, podman 3 or newer), or use --engine buildah")
        podman = [c for c in version.get("Components") or [] if "podman" in str(c.get("Name", "")).lower()]
        self.podman = bool(podman)
        self.libpod_version = (podman[0].get("Details") or {}).get("APIVersion") if podman else None
        self.daemon = f"{'podman' if self.podman else 'Docker'} {version.get('Version', '?')} at {url}"
        self._pristine: set[str] = set()
        self._config: dict[str, dict] = {}
        self._seq = 0

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _api(self, what: str, hint: str | None = None) -> Iterator[None]:
        """Daemon errors as BakeryErrors naming the engine and the step."""
        import requests

        try:
            yield
        except self._errors.APIError as e:
            raise BakeryError(f"docker engine ({self.daemon}): {what}: {e.explanation or e}", hint) from None
        except (requests.exceptions.ConnectionError, self._errors.DockerException) as e:
            raise BakeryError(f"docker engine: lost the daemon at {self.url} while trying to {what}: {e}",
                              HINT_START) from None

    def _stream(self, url: str, *, params: dict, headers: dict | None = None) -> Iterator[dict]:
        """POST to a streamed JSON-lines endpoint (push, libpod pull): the SDK has no parameter for tlsVerify."""
        res = self.api._post(url, params=params, headers=headers or {}, stream=True)
        self.api._raise_for_status(res)
        yield from self.api._stream_helper(res, decode=True)

    def _auth_header(self, ref: str) -> dict:
        """Credentials for the registry of ``ref`` from ~/.docker/config.json (the SDK reads it)."""
        from docker import auth

        registry, _ = auth.resolve_repository_name(ref.split("@")[0])
        header = auth.get_config_header(self.api, registry)
        return {"X-Registry-Auth": header} if header else {}

    @staticmethod
    def _split(name: str) -> tuple[str, str | None]:
        from docker.utils import parse_repository_tag

        return parse_repository_tag(name)

    def _image_config(self, image: str) -> dict:
        with self._api(f"inspect image {image}"):
            return self.api.inspect_image(image).get("Config") or {}

    def _placeholder_kwargs(self, image: str) -> dict:
        """A container is created, never started: it needs a command only when the image has none."""
        cfg = self._image_config(image)
        return {} if (cfg.get("Cmd") or cfg.get("Entrypoint")) else {"command": ["/bin/sh"]}

    # -- images ---------------------------------------------------------------

    def build(self, *, containerfile, context, tag, build_args=None, tls_verify=True, annotations=None,
              labels=None, log=None, on_line=None) -> str:
        # The Docker build API has no annotations: they become labels (labels win on a clash).
        all_labels = {**(annotations or {}), **(labels or {})}
        out = _Lines(log, on_line)
        image_id, error = None, None
        try:
            with self._api(f"build {tag}"):
                for chunk in self.api.build(path=str(context), dockerfile=str(containerfile), tag=tag,
                                            buildargs=dict(build_args or {}), labels=all_labels or None,
                                            rm=True, forcerm=True, decode=True, timeout=None):
                    if "stream" in chunk:
                        out.feed(chunk["stream"])
                    if "error" in chunk:
                        error = chunk
                        out.feed(chunk["error"] + "\n")
                    aux = chunk.get("aux") or {}
                    if isinstance(aux, dict) and aux.get("ID"):
                        image_id = aux["ID"]
        finally:
            out.close()
        if error:
            code = (error.get("errorDetail") or {}).get("code") or 1
            raise CommandFailed(["docker-api", "build", "-f", str(containerfile), "-t", tag, str(context)], code,
                                out.text(), f"full log: {log}" if log else None)
        if not image_id:
            m = re.search(r"Successfully built ([0-9a-f]+)", out.text())
            image_id = m.group(1) if m else self.inspect(tag)["Id"]
        return image_id

    def import_rootfs(self, rootfs, tag, *, env, cmd, labels=None, arch=None) -> str:
        if arch:
            raise BakeryError(f"the docker engine cannot import a {arch} root file system yet",
                              "make foreign-architecture bases with --engine buildah")
        changes = [f"ENV {k}={json.dumps(v)}" for k, v in env.items()] + [f"CMD {json.dumps(cmd)}"]
        changes += [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in (labels or {}).items()]
        with tempfile.TemporaryDirectory(prefix="bakery-import-") as tmp:
            tar = Path(tmp) / "rootfs.tar"
            with tarfile.open(tar, "w") as tf:
                for entry in sorted(Path(rootfs).iterdir()):
                    tf.add(entry, arcname=entry.name)
            with self._api(f"import {rootfs} as {tag}"):
                # The repository is set by tagging afterwards: podman's compat import ignores ?tag=.
                res = self.api.import_image(src=str(tar), changes=changes)
        image_id = None
        for line in str(res).splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("error"):
                    raise BakeryError(f"docker engine ({self.daemon}): import of {rootfs} failed: {doc['error']}")
                image_id = doc.get("id") or (doc.get("status") if str(doc.get("status", "")).startswith("sha256:")
                                             else image_id)
        if not image_id:
            raise BakeryError(f"docker engine ({self.daemon}): import of {rootfs} gave no image id: {res!r}"[:500])
        self.tag(image_id, tag)
        return image_id

    @contextlib.contextmanager
    def _archive(self, image: str, path: str, what: str) -> Iterator[io.RawIOBase]:
        """The daemon's tar of ``path`` in ``image`` (resolved inside the container's root, never the
        host's), as a stream; nothing runs in the image."""
        ctr = self.from_image(image)
        try:
            with self._api(f"{what} {path} of {image}"):
                try:
                    stream, _ = self.api.get_archive(ctr, path)
                except self._errors.NotFound:
                    raise BakeryError(f"docker engine: {path} not found in {image}") from None
                yield _StreamReader(stream)
        finally:
            self.remove(ctr)

    def read_file(self, image, path) -> bytes:
        with self._archive(image, path, "read") as archive:
            data = archive.read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            member = next((m for m in tf.getmembers() if m.isfile()), None)
            if member is None:
                raise BakeryError(f"docker engine: {path} in {image} is not a regular file")
            f = tf.extractfile(member)
            assert f is not None  # a regular file's member
            return f.read()

    def export_dir(self, image, path, dest, *, limits=safefs.Limits()) -> int:
        """The folder, extracted as data: regular files and folders only."""
        with self._archive(image, path, "export") as archive:
            return safefs.extract_tar(archive, dest, strip=PurePosixPath(path).name, limits=limits) or 0

    def image_id(self, image) -> str:
        with self._api(f"look for image {image}"):
            found = self._id_of(image)
        if not found:
            raise BakeryError(f"image {image} not found in the daemon's store")
        return found

    def pull(self, ref, *, tls_verify=True) -> str:
        hint = ("check the reference and the registry's credentials (~/.docker/config.json, 'docker login'); "
                "an http registry must be insecure for the daemon (docs/engines.md)")
        with self._api(f"pull {ref}", hint):
            if self.podman and self.libpod_version:
                # podman's libpod endpoint takes tlsVerify per request; its compat one does not.
                image_id, error = None, None
                for chunk in self._stream(f"{self.api.base_url}/v{self.libpod_version}/libpod/images/pull",
                                          params={"reference": ref, "tlsVerify": str(tls_verify).lower(),
                                                  "quiet": "true"}, headers=self._auth_header(ref)):
                    error = chunk.get("error") or error
                    image_id = chunk.get("id") or image_id
                if error or not image_id:
                    raise BakeryError(f"docker engine ({self.daemon}): pull {ref} failed: {error}", hint)
                return image_id
            repo, tag = self._split(ref)
            error = None
            for chunk in self.api.pull(repo, tag=tag, stream=True, decode=True):
                error = chunk.get("error") or error
            if error:
                raise BakeryError(f"docker engine ({self.daemon}): pull {ref} failed: {error}", hint)
            return self.api.inspect_image(ref)["Id"]

    def push(self, image, ref, *, tls_verify=True) -> str:
        hint = ("check the registry's credentials (the docker SDK reads ~/.docker/config.json: 'docker login' or "
                "'podman login'), that it accepts pushes, and, for an http registry, that the daemon treats it "
                "as insecure (docs/engines.md)")
        repo, tag = self._split(ref)
        tag = tag or "latest"
        name = f"{repo}:{tag}"
        added = False
        with self._api(f"push {image} to {ref}", hint):
            info = self.api.inspect_image(image)
            if self._id_of(name) != info["Id"]:
                self.api.tag(image, repo, tag)  # a daemon pushes by name
                added = bool(info.get("RepoTags"))  # untag after, unless it is the image's only name
            try:
                params = {"tag": tag}
                if self.podman and not tls_verify:
                    params["tlsVerify"] = "false"  # podman's compat push takes it; Docker decides per registry
                digest, error = None, None
                for chunk in self._stream(self.api._url("/images/{0}/push", repo), params=params,
                                          headers=self._auth_header(ref)):
                    if chunk.get("error"):
                        error = chunk["error"]
                    aux = chunk.get("aux") or {}
                    if isinstance(aux, dict) and aux.get("Digest"):
                        digest = aux["Digest"]
                    m = re.search(r"digest: (sha256:[0-9a-f]{64})", str(chunk.get("status", "")))
                    if m and not digest:
                        digest = m.group(1)
            finally:
                if added:
                    with contextlib.suppress(self._errors.APIError):
                        self.api.remove_image(name, noprune=True)
        if error:
            raise BakeryError(f"docker engine ({self.daemon}): the registry refused the push of {ref}: {error}", hint)
        if not digest:  # not in the stream: ask the registry
            r = oci.Ref.parse(ref)
            digest = oci.Registry(r.registry, tls_verify=tls_verify).head_manifest(r.repository, tag)
        if not digest:
            raise BakeryError(f"docker engine ({self.daemon}): pushed {ref} but the registry does not have it", hint)
        return digest

    def _id_of(self, image: str) -> str | None:
        try:
            return self.api.inspect_image(image)["Id"]
        except self._errors.NotFound:
            return None

    def inspect(self, image) -> dict:
        """The daemon's image inspect, plus buildah's ``OCIv1`` keys so callers read one shape."""
        with self._api(f"inspect image {image}", "is the image in the daemon's store? (docker images)"):
            info = self.api.inspect_image(image)
        cfg = info.get("Config") or {}
        info["OCIv1"] = {"config": {k: cfg.get(k) for k in ("Cmd", "Entrypoint", "Env", "Labels", "WorkingDir",
                                                            "User", "ExposedPorts", "Volumes", "StopSignal")},
                         "rootfs": {"type": "layers", "diff_ids": (info.get("RootFS") or {}).get("Layers") or []}}
        info.setdefault("ImageAnnotations", {})  # no manifest annotations in a daemon's store
        return info

    def exists(self, image) -> bool:
        with self._api(f"look for image {image}"):
            return self._id_of(image) is not None

    def remove_image(self, image) -> None:
        with contextlib.suppress(self._errors.NotFound, self._errors.APIError):
            self.api.remove_image(image, force=True)

    def tag(self, image, name) -> None:
        repo, tag = self._split(name)
        with self._api(f"tag {image} as {name}"):
            self.api.tag(image, repo, tag or "latest")

    # -- working containers ---------------------------------------------------

    def from_image(self, image, name=None) -> str:
        if not name:
            self._seq += 1
            name = f"bakery-ctr-{os.getpid()}-{self._seq}-{int(time.time())}"  # stale ones are found by pid
        with self._api(f"create a container from {image}", "the image must be in the daemon's store (pull it first)"):
            self.api.create_container(image, name=name, **self._placeholder_kwargs(image))
        self._pristine.add(name)
        self._config[name] = {"image": image}
        return name

    def containers(self) -> list[str]:
        with self._api("list containers"):
            if self.podman and self.libpod_version:
                # podman's compat list inspects every container and fails whole on one whose storage
                # is gone ("getting container from store ...: container not known"; a suite run hit
                # it); the libpod list reads its own database only.
                res = self.api._get(f"{self.api.base_url}/v{self.libpod_version}/libpod/containers/json",
                                    params={"all": "true"})
                found = self.api._result(res, json=True) or []
            else:
                found = self.api.containers(all=True)
            return [n.lstrip("/") for c in found for n in (c.get("Names") or [])[:1]]

    def _end_stalled_stream(self, container: str, stream, done: threading.Event, stalled: list) -> None:
        """podman 4's API service may keep a followed log stream open after the container has
        exited (seen once in four suite runs: the run hung). Once the container has exited and
        the stream is still open LOG_GRACE seconds later, it is closed; the rest of the log is
        then read whole."""
        try:
            self.api.wait(container)
        except Exception:  # noqa: BLE001 - the run itself reports what went wrong
            return
        if not done.wait(LOG_GRACE):
            stalled.append(True)
            with contextlib.suppress(Exception):
                stream.close()

    def run(self, container, argv, *, volumes=(), env=None, log=None, on_line=None, sandbox=False,
            timeout=None) -> None:
        """Run ``argv`` in the working container, with bind mounts; streams the output.

        A Docker container's command and mounts are fixed when it is created,
        so the working container is re-created to run ``argv`` (from a snapshot
        of it when it was changed already): its file changes are kept for a
        later commit, as with buildah.
        """
        state = self._config.setdefault(container, {})
        image = state.get("image")
        snapshot = None
        with self._api(f"run {argv[0]} in {container}"):
            if container not in self._pristine or not image:
                snapshot = self.api.commit(container)["Id"]
                image = snapshot
            self.api.remove_container(container, force=True)
            binds = [f"{v[0]}:{v[1]}:{v[2] if len(v) > 2 else 'rw'}" for v in volumes]
            if sandbox:  # a bake of untrusted input: no network, no capabilities, no privilege gain
                host_config = self.api.create_host_config(binds=binds, network_mode="none", cap_drop=["ALL"],
                                                          security_opt=["no-new-privileges"], pids_limit=4096)
            else:
                host_config = self.api.create_host_config(binds=binds, network_mode="host")
            self.api.create_container(image, name=container, entrypoint=argv[:1], command=list(argv[1:]),
                                      environment=dict(env or {}), host_config=host_config,
                                      **({"user": SANDBOX_USER} if sandbox else {}))
        self._pristine.discard(container)
        if snapshot:
            state.setdefault("snapshots", []).append(snapshot)
        out = _Lines(log, on_line)
        expired: list[bool] = []
        try:
            with self._api(f"run {argv[0]} in {container}"):
                self.api.start(container)
                timer = None
                if timeout is not None:  # the log stream ends when the container is killed
                    timer = threading.Timer(timeout, self._expire, args=(container, expired))
                    timer.daemon = True
                    timer.start()
                stream = self.api.logs(container, stream=True, follow=True, stdout=True, stderr=True)
                done, stalled = threading.Event(), list[bool]()
                watcher = threading.Thread(target=self._end_stalled_stream, args=(container, stream, done, stalled),
                                           daemon=True)
                watcher.start()
                try:
                    missed, seen = False, 0
                    try:
                        for chunk in stream:
                            text = chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
                            if "failed to obtain logs for Container" in text and '"response":500' in text:
                                missed = True  # podman 4: a container that exits at once races the follow
                                continue
                            out.feed(text)
                            seen += len(text)
                    except Exception:
                        if not stalled:
                            raise
                    done.set()
                    status = self.api.wait(container)
                    if missed or stalled:  # it has exited: its whole log is there to read now
                        text = self.api.logs(container, stream=False, stdout=True, stderr=True)
                        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
                        out.feed(text[seen:])  # what the stream did not give
                finally:
                    done.set()
                    if timer is not None:
                        timer.cancel()
        except BaseException:
            with contextlib.suppress(Exception):
                self.api.kill(container)
            raise
        finally:
            out.close()
        code = status.get("StatusCode", 1) if isinstance(status, dict) else int(status)
        if expired:
            raise CommandFailed(["docker-api", "run", container, "--", *argv], code,
                                out.text() + f"\nstopped: it ran longer than its time limit of {timeout:g} s")
        if code != 0:
            raise CommandFailed(["docker-api", "run", container, "--", *argv], code, out.text(),
                                f"full log: {log}" if log else None)

    def _expire(self, container: str, expired: list[bool]) -> None:
        expired.append(True)
        with contextlib.suppress(Exception):
            self.api.kill(container)

    def copy(self, container, src, dest) -> None:
        """``buildah copy``: a file to the path ``dest``, a directory's contents into ``dest``; owned by root."""
        src = Path(src)

        def root(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            return ti

        dest_p = PurePosixPath(dest)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            if src.is_dir():
                for entry in sorted(src.iterdir()):
                    tf.add(entry, arcname=entry.name, filter=root)
                target = str(dest_p)
            else:
                tf.add(src, arcname=dest_p.name, filter=root)
                target = str(dest_p.parent)
        with self._api(f"copy {src} to {container}:{dest}"):
            try:
                ok = self.api.put_archive(container, target, buf.getvalue())
            except self._errors.NotFound:  # the directory does not exist yet: send it from /
                ok = self.api.put_archive(container, "/", self._rooted(buf.getvalue(), PurePosixPath(target)))
        if not ok:
            raise BakeryError(f"docker engine ({self.daemon}): copy of {src} to {container}:{dest} was refused")
        self._pristine.discard(container)

    @staticmethod
    def _rooted(data: bytes, under: PurePosixPath) -> bytes:
        """The archive ``data`` moved below ``under``, with the missing parent directories (0755, root)."""
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as tf:
            parts = under.relative_to("/").parts
            for i in range(1, len(parts) + 1):
                ti = tarfile.TarInfo("/".join(parts[:i]))
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                tf.addfile(ti)
            for m in src.getmembers():
                f = src.extractfile(m) if m.isfile() else None
                m.name = str(PurePosixPath(*parts, m.name))
                tf.addfile(m, f)
        return out.getvalue()

    def configure(self, container, *, entrypoint=None, env=None, labels=None, annotations=None) -> None:
        """Kept until the commit (a Docker container's config cannot change); annotations become labels."""
        cfg = self._config.setdefault(container, {})
        if entrypoint is not None:
            cfg["entrypoint"] = list(entrypoint)
        cfg.setdefault("env", {}).update(env or {})
        cfg.setdefault("labels", {}).update({**(annotations or {}), **(labels or {})})

    def commit(self, container, image) -> str:
        """The container's changes as one new layer on its image, with the configured settings."""
        cfg = self._config.get(container, {})
        changes = []
        with self._api(f"commit {container}"):
            info = self.api.inspect_container(container)
            base = self.api.inspect_image(info["Image"]).get("Config") or {}
            now = info.get("Config") or {}
            # The image's own Entrypoint/Cmd unless configured: a container made to run a command, or a
            # placeholder for an image without one, must not leave it in the image. CMD always follows
            # ENTRYPOINT: Docker clears an inherited Cmd on ENTRYPOINT, podman and buildah keep it.
            entry = cfg.get("entrypoint", base.get("Entrypoint"))
            set_entry = "entrypoint" in cfg or (now.get("Entrypoint") or None) != (base.get("Entrypoint") or None)
            if set_entry:
                changes.append(f"ENTRYPOINT {json.dumps(entry or [])}")
            if set_entry or (now.get("Cmd") or None) != (base.get("Cmd") or None):
                changes.append(f"CMD {json.dumps(base.get('Cmd') or [])}")
            changes += [f"ENV {k}={json.dumps(v)}" for k, v in cfg.get("env", {}).items()]
            changes += [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in cfg.get("labels", {}).items()]
            repo, tag = self._split(image)
            res = self.api.commit(container, repository=repo, tag=tag or "latest", changes=changes or None)
        return res["Id"]

    def remove(self, container) -> None:
        with contextlib.suppress(self._errors.NotFound, self._errors.APIError):
            self.api.remove_container(container, force=True, v=True)
        self._pristine.discard(container)
        state = self._config.pop(container, {})
        for snap in state.get("snapshots", []):
            self.remove_image(snap)
