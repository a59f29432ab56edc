"""bakery registry start|stop|status: the embedded registry on 127.0.0.1."""

import json

from bakery.images import registry as registrymod


def setup_parser(sub, parent):
    p = sub.add_parser("registry", parents=[parent], help="run the embedded OCI registry (CNCF distribution)",
                       description="Start, stop or show the embedded registry: Debian's docker-registry on "
                                   "127.0.0.1, storage in $XDG_DATA_HOME/bakery/registry (or $BAKERY_DATA_DIR).")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, default=registrymod.DEFAULT_PORT, help="port (0: any free port)")
    p.add_argument("--json", action="store_true")
    return p


def run(args) -> int:
    emb = registrymod.embedded()
    if args.action == "start":
        addr = emb.start(port=args.port)
        print(json.dumps({"address": addr}) if args.json else addr)
        return 0
    if args.action == "stop":
        stopped = emb.stop()
        if not args.quiet:
            print("stopped" if stopped else "not running")
        return 0
    running_at = emb.address()
    if args.json:
        print(json.dumps({"running": bool(running_at), "address": running_at, "storage": str(emb.root / "storage")}))
    else:
        print(f"running on {running_at}" if running_at else "not running")
    return 0 if running_at else 1
