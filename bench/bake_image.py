"""Time `bakery bake IMAGE` on a real registry, node tag deleted before each run, per engine.

    .venv/bin/python bench/bake_image.py 127.0.0.1:5000/kernel:1.0 --target skylake --runs 5

Prints the median and every run, for the buildah engine (bakery's toolchain image, sandboxed)
and --engine none (the registry's API alone). The IR image must exist (bakery build RECIPE)."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def once(ref: str, target: str, engine: str) -> float:
    subprocess.run(["skopeo", "delete", "--tls-verify=false", f"docker://{ref}-{target}"], capture_output=True)
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "bakery", "-q", "bake", ref, "--target", target, "--engine", engine],
                        capture_output=True, text=True)
    if cp.returncode:
        raise SystemExit(f"bake failed: {cp.stderr.strip()}")
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref", help="the IR image, REGISTRY/REPO:TAG")
    ap.add_argument("--target", default="skylake", help="a target no other job bakes (default skylake)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--engines", default="buildah,none")
    args = ap.parse_args()
    for engine in args.engines.split(","):
        runs = [once(args.ref, args.target, engine) for _ in range(args.runs)]
        print(f"{args.ref} {args.target} engine={engine}: median {statistics.median(runs):.2f} s "
              f"({', '.join(f'{r:.2f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
