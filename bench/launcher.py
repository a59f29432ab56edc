r"""The self-finishing image, measured with real podman and the real registry (issue 14).

    .venv/bin/python bench/launcher.py 127.0.0.1:5000/kernel:1.0 --target x86_64_v3 -n 20 -- 2000

REF is an IR image made by `bakery build`, in a registry on loopback; the arguments after --
are the app's. Prints, for the app:

1. first start on a cold cache, no node tag reachable (--network=none): `podman run IR args`,
   against `podman run NODE-TAG args` with the node tag already pulled;
2. N containers started at once on one shared cache volume, no node tag anywhere: bakes made
   (want 1), correct outputs (want N), wall time;
3. the node tag in the registry and an empty cache: bakes (want 0), time to first output,
   against the node tag's own start;
4. BAKERY_REGISTRY pointing at `bakery serve`, N containers each on its own empty cache (N
   nodes): bakes at serve (want 1), correct outputs (want N).

"Correct" is stdout equal to the node tag's own for the same arguments (with --compare, its lines
matching the pattern: LAMMPS prints timings). LAMMPS reads its input deck on stdin:

    .venv/bin/python bench/launcher.py 127.0.0.1:5000/lammps:20220106-2 --target x86_64_v3 -n 20 \
        --stdin in.lj --compare '^\s*\d+\s+-?\d' -- -log none -var steps 100

Scenario 4 deletes the node tag REF-<serve target> first. Podman runs as root with a containers.conf that keeps
podman's own rlimits (what this sandbox needs; harmless elsewhere)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def podman_env(work: Path) -> dict:
    sock = work / "limits.sock"
    p = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    limits = []
    for line in Path(f"/proc/{p.pid}/limits").read_text().splitlines():
        for key, name in (("Max open files", "nofile"), ("Max processes", "nproc")):
            if line.startswith(key):
                soft, hard = line[len(key):].split()[:2]
                limits.append(f'"{name}={soft}:{hard}"')
    p.terminate()
    p.wait()
    conf = work / "containers.conf"
    conf.write_text(f"[containers]\ndefault_ulimits = [{', '.join(limits)}]\n[engine]\ncgroup_manager = \"cgroupfs\"\n"
                    f"events_logger = \"file\"\n" + ('runtime = "runc"\n' if shutil.which("runc") else ""))
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


class Podman:
    def __init__(self, env: dict, stdin: bytes | None = None, compare: str | None = None):
        self.env = env
        self.stdin = stdin
        self.compare = re.compile(compare, re.M) if compare else None

    def output(self, cp: subprocess.CompletedProcess) -> str:
        """What "correct" compares: stdout, or only its lines matching --compare (timings differ)."""
        if self.compare is None:
            return cp.stdout
        return "\n".join(line for line in cp.stdout.splitlines() if self.compare.search(line))

    def run(self, image: str, args: list[str], *, cache: Path | None = None, env: dict | None = None,
            network: str = "host") -> tuple[float, subprocess.CompletedProcess]:
        argv = ["podman", "run", "--rm", f"--network={network}", "--pull=never"]
        if self.stdin is not None:
            argv.append("-i")
        if cache is not None:
            argv += ["-v", f"{cache}:/var/cache/bakery"]
        for k, v in (env or {}).items():
            argv += ["-e", f"{k}={v}"]
        t0 = time.monotonic()
        cp = subprocess.run([*argv, image, *args], capture_output=True, env=self.env, input=self.stdin)
        cp.stdout, cp.stderr = cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")
        return time.monotonic() - t0, cp

    def pull(self, image: str) -> None:
        subprocess.run(["podman", "pull", "-q", "--tls-verify=false", image], check=True, capture_output=True,
                       env=self.env)


def bakes_in(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if line.startswith("bakery: baking ") and "the first start" in line)


def delete_tag(ref: str) -> None:
    subprocess.run(["skopeo", "delete", "--tls-verify=false", f"docker://{ref}"], capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref", help="the IR image, REGISTRY/REPO:TAG")
    ap.add_argument("--target", default="x86_64_v3", help="the target the containers run (BAKERY_TARGET)")
    ap.add_argument("--serve-target", default="haswell", help="scenario 4's target (its node tag is deleted)")
    ap.add_argument("-n", type=int, default=20, help="containers started at once (default 20)")
    ap.add_argument("--runs", type=int, default=3, help="runs of scenarios 1 and 3, for the median")
    ap.add_argument("--stdin", type=Path, help="a file given to every container on stdin (LAMMPS's input deck)")
    ap.add_argument("--compare", metavar="REGEX",
                    help="compare only the stdout lines matching REGEX (the app prints timings)")
    argv = sys.argv[1:]
    app_args = argv[argv.index("--") + 1:] if "--" in argv else []
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.args = app_args
    work = Path(tempfile.mkdtemp(prefix="bakery-bench-launcher-"))
    pod = Podman(podman_env(work), a.stdin.read_bytes() if a.stdin else None, a.compare)
    env = {"BAKERY_TARGET": a.target}
    node = f"{a.ref}-{a.target}"
    print(f"# {a.ref} {' '.join(a.args)}; target {a.target}; {os.cpu_count()} cores")

    subprocess.run([sys.executable, "-m", "bakery", "-q", "bake", a.ref, "--target", a.target], check=True)
    pod.pull(a.ref)
    pod.pull(node)
    node_times = []
    for _ in range(a.runs):
        t, cp = pod.run(node, a.args)
        assert cp.returncode == 0, cp.stderr
        node_times.append(t)
        want = pod.output(cp)
    t_node = statistics.median(node_times)

    # 1. first start, cold cache, no node tag reachable
    firsts, hits = [], []
    for i in range(a.runs):
        cache = work / f"cold{i}"
        cache.mkdir()
        t, cp = pod.run(a.ref, a.args, cache=cache, env=env, network="none")
        assert cp.returncode == 0 and pod.output(cp) == want and bakes_in(cp.stderr) == 1, cp.stderr
        firsts.append(t)
        t, cp = pod.run(a.ref, a.args, cache=cache, env=env, network="none")
        assert cp.returncode == 0 and pod.output(cp) == want and "bakery:" not in cp.stderr, cp.stderr
        hits.append(t)
    print(f"1. first start, cold cache, no node tag: podman run IR {statistics.median(firsts):.2f} s "
          f"(runs {', '.join(f'{x:.2f}' for x in firsts)}); podman run node tag {t_node:.2f} s; "
          f"IR again on its cache {statistics.median(hits):.2f} s")

    # 2. N at once on one shared cache, no node tag anywhere
    shared = work / "shared"
    shared.mkdir()
    t0 = time.monotonic()
    with ThreadPoolExecutor(a.n) as pool:
        runs = list(pool.map(lambda _: pod.run(a.ref, a.args, cache=shared, env=env, network="none")[1], range(a.n)))
    wall = time.monotonic() - t0
    print(f"2. {a.n} containers at once, one cache volume, no node tag: bakes {sum(bakes_in(r.stderr) for r in runs)} "
          f"(want 1), correct outputs {sum(r.returncode == 0 and pod.output(r) == want for r in runs)}/{a.n}, "
          f"wall {wall:.2f} s")

    # 3. node tag in the registry, empty cache
    fetches, nbakes = [], 0
    for i in range(a.runs):
        cache = work / f"fetch{i}"
        cache.mkdir()
        t, cp = pod.run(a.ref, a.args, cache=cache, env=env)
        assert cp.returncode == 0 and pod.output(cp) == want, cp.stderr
        nbakes += bakes_in(cp.stderr)
        fetches.append(t)
    print(f"3. node tag in the registry, empty cache: bakes {nbakes} (want 0), first output after "
          f"{statistics.median(fetches):.2f} s (runs {', '.join(f'{x:.2f}' for x in fetches)}) against the node "
          f"tag's own start {t_node:.2f} s ({statistics.median(fetches) / t_node:.2f}x)")

    # 4. bakery serve, N nodes each with its own cache
    registry = a.ref.split("/", 1)[0]
    repo_tag = a.ref.split("/", 1)[1]
    delete_tag(f"{a.ref}-{a.serve_target}")
    addr = f"127.0.0.1:{free_port()}"
    log = work / "serve.log"
    srv = subprocess.Popen([sys.executable, "-m", "bakery", "serve", "--upstream", f"http://{registry}",
                            "--listen", addr], stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(tuple(addr.split(":")), timeout=1).close()  # type: ignore[arg-type]
                break
            except OSError:
                time.sleep(0.1)
        caches = [work / f"node{i}" for i in range(a.n)]
        for c in caches:
            c.mkdir()
        t0 = time.monotonic()
        with ThreadPoolExecutor(a.n) as pool:
            runs = list(pool.map(lambda c: pod.run(a.ref, a.args, cache=c, env={
                "BAKERY_TARGET": a.serve_target, "BAKERY_REGISTRY": f"http://{addr}"})[1], caches))
        wall = time.monotonic() - t0
    finally:
        srv.terminate()
        srv.wait()
    bakes = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    served = sum(1 for b in bakes if b.get("event") == "bake" and b.get("outcome") == "succeeded")
    print(f"4. BAKERY_REGISTRY=bakery serve, {a.n} nodes each with an empty cache ({repo_tag}-{a.serve_target}): "
          f"bakes at serve {served} (want 1), bakes in containers {sum(bakes_in(r.stderr) for r in runs)}, "
          f"correct outputs {sum(r.returncode == 0 and pod.output(r) == want for r in runs)}/{a.n}, wall {wall:.2f} s")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
