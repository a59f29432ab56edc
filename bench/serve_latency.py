"""Latency of a cache-hit manifest GET through ``bakery serve``, as a ratio to the upstream's own.

    python bench/serve_latency.py                 # embedded registry + service, both started here
    python bench/serve_latency.py -n 500 --upstream 127.0.0.1:5000
    python bench/serve_latency.py --fresh         # a new client connection per request (as curl does)

A small image is pushed as ``bench/app:1.0-x86_64_v3`` (a node tag, so each GET
through the service is a cache hit: the upstream answers, nothing bakes). The
service runs as its own process (``bakery serve``), as deployed; both are
measured from here with one keep-alive connection each (``--fresh``: a new
connection per request, as each ``curl`` or a node's first pull is), alternating
in rounds so that machine noise falls on both alike. Goal: median ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCEPT = "application/vnd.oci.image.manifest.v1+json"
REPO, TAG = "bench/app", "1.0-x86_64_v3"


def push_image(addr: str) -> str:
    from bakery import oci

    reg = oci.Registry(addr, tls_verify=False)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, layer = Path(tmp) / "config", Path(tmp) / "layer"
        cfg.write_text(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}))
        layer.write_bytes(os.urandom(4096))
        c = reg.push_blob(REPO, cfg, "application/vnd.oci.image.config.v1+json")
        l = reg.push_blob(REPO, layer, "application/vnd.oci.image.layer.v1.tar")
    manifest = {"schemaVersion": 2, "mediaType": oci.MANIFEST, "config": c, "layers": [l],
                "annotations": {"dev.bakery.bench": "serve_latency"}}
    return reg.put_manifest(REPO, TAG, json.dumps(manifest).encode(), oci.MANIFEST)


def wait_up(addr: str, path: str = "/v2/", timeout: float = 20) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            c = http.client.HTTPConnection(*addr.split(":"), timeout=2)
            c.request("GET", path)
            c.getresponse().read()
            c.close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{addr} did not answer within {timeout}s")


def timings(addr: str, n: int, fresh: bool = False) -> list[float]:
    """Seconds per manifest GET; ``fresh``: each on a new connection (connect included)."""
    host, port = addr.split(":")
    conn = None if fresh else http.client.HTTPConnection(host, int(port), timeout=10)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = conn or http.client.HTTPConnection(host, int(port), timeout=10)
        c.request("GET", f"/v2/{REPO}/manifests/{TAG}", headers={"Accept": ACCEPT})
        r = c.getresponse()
        r.read()
        if fresh:
            c.close()
        out.append(time.perf_counter() - t0)
        assert r.status == 200, r.status
    if conn:
        conn.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="requests per side (default 200)")
    ap.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    ap.add_argument("--upstream", help="an existing registry HOST:PORT (default: start an embedded one)")
    ap.add_argument("--fresh", action="store_true", help="a new client connection per request (default: keep-alive)")
    args = ap.parse_args()

    from bakery.images import registry as registrymod

    stack = []
    tmp = tempfile.TemporaryDirectory(prefix="bakery-bench-")
    try:
        upstream = args.upstream
        if not upstream:
            emb = registrymod.Embedded(Path(tmp.name) / "registry")
            emb.root.mkdir()
            upstream = emb.start(port=0)
            stack.append(emb.stop)
        push_image(upstream)
        port = registrymod.free_port()
        service = f"127.0.0.1:{port}"
        p = subprocess.Popen([sys.executable, "-m", "bakery", "-q", "serve", "--upstream", f"http://{upstream}",
                              "--listen", service], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.append(lambda: (p.terminate(), p.wait(10)))
        wait_up(service, "/healthz")

        per = max(1, args.n // args.rounds)
        timings(upstream, 20), timings(service, 20)  # warm-up: connections, caches
        up, sv = [], []
        for _ in range(args.rounds):
            up += timings(upstream, per, args.fresh)
            sv += timings(service, per, args.fresh)
        mu, ms = statistics.median(up), statistics.median(sv)
        p90 = lambda xs: statistics.quantiles(xs, n=10)[-1]  # noqa: E731
        mode = "a new connection each" if args.fresh else "keep-alive"
        print(f"manifest GET, {len(up)} requests each, {mode}, loopback ({os.cpu_count()} cores)")
        print(f"  upstream (distribution) : median {mu * 1e3:7.3f} ms   p90 {p90(up) * 1e3:7.3f} ms")
        print(f"  bakery serve (cache hit): median {ms * 1e3:7.3f} ms   p90 {p90(sv) * 1e3:7.3f} ms")
        print(f"  ratio (median)          : {ms / mu:.2f}x   (goal <= 1.5x)")
        return 0
    finally:
        for f in reversed(stack):
            try:
                f()
            except Exception:  # noqa: BLE001
                pass
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
