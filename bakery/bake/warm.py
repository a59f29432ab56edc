"""Warm LLVM tools: start clang and opt once per bake worker, fork them per module.

A bake runs clang (and opt, for split units) once per module. Debian's clang-16 spends about
25 ms of CPU in every start before it reads its input: mapping and relocating libLLVM and
libclang-cpp, and LLVM's static constructors. GSL's 774 modules are about 950 such starts,
a third of its bake. ``data/forkserver/forkserver.c``, preloaded into a tool, makes it a fork
server: started once, it forks for every request, and the child runs the tool's own ``main``
with the request's arguments, folder and standard streams. A child is what a fresh start would
be, started already; its outputs are the same bytes (tests/functional/test_warm.py).

Anything that goes wrong with a server (the shim does not build or load, a server dies) makes
that tool run as :func:`bakery.proc.run` runs it, with a note in the debug log: a warm tool is
never a reason for a bake to fail. ``BAKERY_FORKSERVER=0`` turns it off.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from bakery import proc
from bakery.config import Settings
from bakery.errors import CommandFailed

log = logging.getLogger(__name__)

HELLO = b"bakery-forkserver 1"
MIN_MODULES = 24        # below this, the shim's own build (about 0.2 s) costs more than it saves
HELLO_TIMEOUT = 20.0    # seconds a server may take to start
MAX_REQUEST = 1 << 20   # the shim's request buffer: a longer argv runs cold


def shim_source() -> bytes:
    return (resources.files("bakery") / "data" / "forkserver" / "forkserver.c").read_bytes()


class _Server:
    """One started tool, serving one request at a time."""

    def __init__(self, tool: str, shim: Path) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = proc.env_with({"LD_PRELOAD": str(shim), "BAKERY_FORKSERVER_FD": str(theirs.fileno())})
        try:
            self.process = subprocess.Popen([tool], env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(HELLO_TIMEOUT)
        try:
            hello = self.sock.recv(64)
        except OSError:
            hello = b""
        if hello != HELLO:
            why = self._stderr()
            self.close()
            raise OSError(f"{tool} did not start as a fork server: {why}")
        self.sock.settimeout(None)

    def _stderr(self) -> str:
        try:
            self.process.wait(5)
            return (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace").strip()[-300:] \
                or f"exit status {self.process.returncode}"
        except subprocess.TimeoutExpired:
            return "no greeting"

    def run(self, argv: Sequence[str], cwd: str, stdin: int, stdout: int, stderr: int) -> int:
        payload = b"\0".join(os.fsencode(a) for a in (cwd, *argv)) + b"\0"
        self.sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [stdin, stdout, stderr]))])
        reply = self.sock.recv(16)
        if len(reply) != 4:
            raise OSError("the fork server ended")
        return struct.unpack("=i", reply)[0]

    def close(self) -> None:
        self.sock.close()  # the server ends at EOF
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()


class WarmTools:
    """``run`` is :func:`bakery.proc.run` (argv, ``input``, ``cwd``, ``text``; CommandFailed on a
    non-zero exit) for the tools in ``tools``, served warm; any other argv runs as usual.
    One server per tool and calling thread at a time, kept for the next call."""

    def __init__(self, clang: str, work: Path, tools: Sequence[str]) -> None:
        self.tools = set(tools)
        self.shim: Path | None = None
        self.idle: dict[str, list[_Server]] = {t: [] for t in self.tools}
        self.started: list[_Server] = []
        self.cold: set[str] = set()   # tools whose server failed: they run as usual from then on
        self.lock = threading.Lock()
        self.served = 0
        self.servers = 0   # servers closed so far
        try:
            work = work.resolve()  # LD_PRELOAD takes no relative path
            src = work / "forkserver.c"
            src.write_bytes(shim_source())
            so = work / "forkserver.so"
            proc.run([clang, "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], cwd=work)
            self.shim = so
        except (OSError, CommandFailed) as e:
            log.debug(f"bake: fork server not built, tools start afresh: {e}")
            self.cold = set(self.tools)

    @classmethod
    def for_bake(cls, clang: str, work: Path, tools: Sequence[str], modules: int) -> WarmTools | None:
        if modules < MIN_MODULES or not Settings.from_env().forkserver:
            return None
        return cls(clang, work, tools)

    def _take(self, tool: str) -> _Server | None:
        with self.lock:
            if tool in self.cold or self.shim is None:
                return None
            if self.idle[tool]:
                return self.idle[tool].pop()
        try:
            server = _Server(tool, self.shim)
        except OSError as e:
            with self.lock:
                if tool not in self.cold:
                    log.debug(f"bake: {e}; {os.path.basename(tool)} starts afresh for every module")
                self.cold.add(tool)
            return None
        with self.lock:
            self.started.append(server)
        return server

    def run(self, argv: Sequence[str | os.PathLike], *, input: bytes | str | None = None,
            cwd: str | os.PathLike | None = None, text: bool = True) -> subprocess.CompletedProcess:
        args = [os.fspath(a) for a in argv]
        server = self._take(args[0]) if args[0] in self.tools and sum(map(len, args)) < MAX_REQUEST // 2 else None
        if server is None:
            return proc.run(args, input=input, cwd=cwd, text=text)
        fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("stdin", "stdout", "stderr")]
        try:
            if input is not None:
                data = input.encode() if isinstance(input, str) else input
                view = memoryview(data)
                while view:
                    view = view[os.write(fds[0], view):]
                os.lseek(fds[0], 0, os.SEEK_SET)
            try:
                rc = server.run(args, os.path.abspath(cwd or "."), *fds)
            except OSError as e:
                log.debug(f"bake: fork server of {os.path.basename(args[0])} failed ({e}); running it afresh")
                with self.lock:
                    self.started.remove(server)
                server.close()
                return proc.run(args, input=input, cwd=cwd, text=text)
            with self.lock:
                self.idle[args[0]].append(server)
                self.served += 1
            out, err = (_read_all(fd) for fd in fds[1:])
        finally:
            for fd in fds:
                os.close(fd)
        if rc != 0:  # as proc.run says it: with text, stdout then stderr; else stderr
            raise CommandFailed(args, rc, ((out + err) if text else err).decode(errors="replace"))
        if text:
            return subprocess.CompletedProcess(args, rc, out.decode(errors="replace"), err.decode(errors="replace"))
        return subprocess.CompletedProcess(args, rc, out, err)

    def close(self) -> dict:
        """Stop the servers; what they did, for ``bakery bake --json`` (timings.warm_tools)."""
        with self.lock:
            servers, self.started = self.started, []
            for t in self.idle:
                self.idle[t] = []
            self.servers += len(servers)
        for s in servers:
            s.close()
        if self.served:
            log.debug(f"bake: {self.served} tool runs forked from {self.servers} started tools")
        return {"forked": self.served, "servers": self.servers,
                "started_afresh": sorted(os.path.basename(t) for t in self.cold)}


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
