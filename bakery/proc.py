"""The one way bakery runs external tools: argv lists only, never a shell.

Failures raise :class:`CommandFailed` carrying the quoted command and the tail
of its output, so a user sees what ran and why it broke.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from bakery.errors import BakeryError, CommandFailed

# Debian package that provides a tool, for the "not found" hint.
PACKAGES = {
    "buildah": "buildah",
    "skopeo": "skopeo",
    "docker-registry": "docker-registry",
    "debootstrap": "debootstrap",
    "make": "make",
    "cmake": "cmake",
    "autoreconf": "autoconf automake libtool",
    "git": "git",
    "objdump": "binutils",
    "qemu-aarch64": "qemu-user",
}


def which(tool: str, *, hint: str | None = None) -> str:
    """Absolute path of ``tool`` or a BakeryError that says how to install it."""
    found = shutil.which(tool)
    if found:
        return found
    pkg = PACKAGES.get(tool)
    if hint is None and pkg:
        hint = f"install it with: apt-get install {pkg}"
    raise BakeryError(f"{tool} not found on PATH", hint)


def run(
    argv: Sequence[str | os.PathLike],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | str | None = None,
    check: bool = True,
    timeout: float | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``argv`` and capture its output (stderr folded into the error on failure)."""
    argv = [os.fspath(a) for a in argv]
    if text and isinstance(input, bytes):
        input = input.decode()
    try:
        cp = subprocess.run(
            argv, cwd=cwd, env=None if env is None else dict(env), input=input,
            capture_output=True, text=text, timeout=timeout,
        )
    except FileNotFoundError:
        raise BakeryError(f"{argv[0]} not found", _install_hint(str(argv[0]))) from None
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(argv, -1, f"timed out after {timeout}s") from e
    if check and cp.returncode != 0:
        out = (cp.stdout or "") + (cp.stderr or "") if text else (cp.stderr or b"").decode(errors="replace")
        raise CommandFailed(argv, cp.returncode, out)
    return cp


def stream(
    argv: Sequence[str | os.PathLike],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> int:
    """Run a long command, sending each output line to ``log`` and ``on_line``.

    Keeps the last lines in memory for the error message; stdin is closed so
    that a build never waits for input. With ``timeout``, the command's process
    group is sent SIGTERM after that many seconds (``buildah run`` then stops its
    container), SIGKILL 10 s later, and CommandFailed says it timed out.
    """
    argv = [os.fspath(a) for a in argv]
    tail: deque[str] = deque(maxlen=40)
    logf = open(log, "a", encoding="utf-8", errors="replace") if log else None
    timer = None
    expired = threading.Event()
    try:
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", bufsize=1, start_new_session=timeout is not None,
            )
        except FileNotFoundError:
            raise BakeryError(f"{argv[0]} not found", _install_hint(str(argv[0]))) from None
        if timeout is not None:
            timer = threading.Thread(target=_stop_after, args=(proc, timeout, expired), daemon=True)
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if logf:
                logf.write(line)
            if on_line:
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    finally:
        if logf:
            logf.close()
        if timer is not None and proc.poll() is None:
            _kill_group(proc, signal.SIGKILL)
    if expired.is_set():
        raise CommandFailed(argv, rc, "\n".join([*tail, f"stopped: it ran longer than its time limit of {timeout:g} s"]))
    if check and rc != 0:
        hint = f"full log: {log}" if log else None
        raise CommandFailed(argv, rc, "\n".join(tail), hint)
    return rc


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_after(proc: subprocess.Popen, timeout: float, expired: threading.Event) -> None:
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    expired.set()
    _kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)


def _install_hint(tool: str) -> str | None:
    pkg = PACKAGES.get(os.path.basename(tool))
    return f"install it with: apt-get install {pkg}" if pkg else None


def env_with(extra: Mapping[str, str] | None = None, drop: Iterable[str] = ()) -> dict[str, str]:
    env = dict(os.environ)
    for k in drop:
        env.pop(k, None)
    env.update(extra or {})
    return env
