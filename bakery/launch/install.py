"""Install the launcher in an IR image (the last step of its Containerfile).

``python3 -m bakery.launch.install BUNDLE --ref REF --platform P [--platforms P1,P2]`` writes

* ``/bakery/launch.json``: what the launcher needs at every start without reading the plan
  (the plan's digest, the app, its toolchain and ISA, the image's reference and platforms);
* one small stub per executable the plan installs, at ``/usr/local/bin/<name>``, where a
  node tag has the binary itself. The image's entrypoint is the recipe's, as on a node tag,
  and starting it starts the launcher, which finishes the binary for this CPU once and
  ``exec``s it. A node tag's layer replaces the stubs with the binaries;
* the cache folder ``/var/cache/bakery`` (mode 1777: any user of the container may bake).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bakery import oci
from bakery import plan as planmod

INFO = Path("/bakery/launch.json")
CACHE = Path("/var/cache/bakery")
STUB = """#!/usr/bin/python3 -I
# bakery's launcher for {name}: finishes {name} for this CPU at its first start (once per
# CPU type, cached in /var/cache/bakery), then runs it with these arguments. docs/launcher.md
import sys
sys.path.insert(0, {lib!r})
from bakery.launch.stub import main
main()
"""


def info(bundle: Path, ref: str, platform: str, platforms: list[str]) -> dict:
    plan = planmod.load(bundle)
    digest = oci.sha256((bundle / "plan.json").read_bytes())
    return {
        "app": plan.app.name, "version": plan.app.version, "plan": digest, "bundle": str(bundle),
        "ref": ref, "platform": platform, "platforms": platforms,
        "family": plan.toolchain.family, "compiler": plan.toolchain.version, "llvm": plan.toolchain.llvm_major,
        "executables": sorted(name for name, link in plan.installs() if link.kind == "executable"),
        "outputs": sorted(name for name, _ in plan.installs()),
    }


def install(bundle: Path, ref: str, platform: str, platforms: list[str], *, root: Path = Path("/"),
            bindir: str = "/usr/local/bin", lib: str = "/opt/bakery/lib") -> dict:
    data = info(bundle, ref, platform, platforms)
    target = root / str(INFO).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    bins = root / bindir.lstrip("/")
    bins.mkdir(parents=True, exist_ok=True)
    for name in data["executables"]:
        stub = bins / name
        stub.write_text(STUB.format(name=name, lib=lib))
        stub.chmod(0o755)
    cache = root / str(CACHE).lstrip("/")
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o1777)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bakery.launch.install", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--ref", required=True, help="the IR image's reference, REGISTRY/REPO:TAG")
    p.add_argument("--platform", required=True, help="this image's OCI platform, e.g. linux/amd64")
    p.add_argument("--platforms", default="", help="every platform the image is built for, comma-separated")
    args = p.parse_args(argv)
    platforms = [x for x in args.platforms.split(",") if x] or [args.platform]
    data = install(args.bundle, args.ref, args.platform, platforms)
    print(f"launcher: {', '.join(data['executables']) or 'no executable'} in /usr/local/bin start the launcher")
    return 0


if __name__ == "__main__":
    sys.exit(main())
