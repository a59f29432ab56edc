"""The embedded registry: Debian's docker-registry (CNCF distribution) on 127.0.0.1.

``bakery registry start`` runs it in the background with its storage in the
user's data dir; build and bake use it when no registry is named.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bakery import proc, templates
from bakery.config import Settings
from bakery.errors import BakeryError

log = logging.getLogger(__name__)

DEFAULT_PORT = 5000


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Settings.from_env().data_dir or Path(base) / "bakery"


@dataclass
class Embedded:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def state(self) -> dict | None:
        try:
            st = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not _alive(st.get("pid", -1)):
            return None
        return st

    def address(self) -> str | None:
        st = self.state()
        return st["addr"] if st and ping(st["addr"]) else None

    def start(self, port: int = DEFAULT_PORT) -> str:
        st = self.state()
        if st:
            if ping(st["addr"]):
                return st["addr"]
            self.stop()
        exe = proc.which("docker-registry")
        if port == 0:
            port = free_port()
        elif _in_use(port):
            raise BakeryError(f"127.0.0.1:{port} is already in use",
                              "choose another with --port, or --port 0 for any free port")
        addr = f"127.0.0.1:{port}"
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(templates.render_file("registry/config.yml.j2", storage=str(storage), addr=addr,
                                                log_level="warn"))
        logf = open(self.root / "registry.log", "ab")
        # distribution reads every REGISTRY_* variable as a config override (REGISTRY_AUTH=htpasswd
        # ... works so); REGISTRY_AUTH_FILE, the containers tools' login file, is not one of its own
        # and made it exit at start.
        env = {k: v for k, v in os.environ.items() if k != "REGISTRY_AUTH_FILE"}
        p = subprocess.Popen([exe, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                             start_new_session=True, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if p.poll() is not None:
                tail = (self.root / "registry.log").read_text(errors="replace")[-800:]
                raise BakeryError(f"docker-registry exited at start (status {p.returncode})", tail)
            if ping(addr):
                self.state_file.write_text(json.dumps({"pid": p.pid, "addr": addr, "storage": str(storage)}))
                log.info(f"registry: started on {addr} (storage {storage})")
                return addr
            time.sleep(0.1)
        p.kill()
        raise BakeryError(f"docker-registry did not answer on {addr} within 20s")

    def stop(self) -> bool:
        try:
            st = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        pid = st.get("pid", -1)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return True


def embedded() -> Embedded:
    root = data_dir() / "registry"
    root.mkdir(parents=True, exist_ok=True)
    return Embedded(root)


def default_registry() -> str:
    """BAKERY_REGISTRY if set, else the embedded registry (started if needed)."""
    named = Settings.from_env().registry
    if named:
        return named
    return embedded().start()


def ping(addr: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{addr}/v2/", timeout=timeout) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        return e.code == 401  # up, wants credentials
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
