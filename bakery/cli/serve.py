"""bakery serve: a registry front that bakes node tags on their first pull."""

import signal
import sys

from bakery.cli import common

DESCRIPTION = """\
Serve the OCI distribution API in front of a registry (--upstream). Everything
passes through (blobs streamed, uploads, manifests, tags, catalog, referrers,
auth challenges); a pull of a node tag <repo>:<tag>-<target>[-slim] that the
upstream does not have bakes it from the IR image <repo>:<tag> and pushes it to
the upstream first, once for any number of concurrent pulls:

  skopeo inspect --tls-verify=false docker://127.0.0.1:5001/pi:1.0-x86_64_v3

Waiting pulls get the manifest when the bake is done; past --deadline they get
503 with Retry-After (the bake goes on), past --queue waiting bakes 429. A bake
that takes longer than --bake-timeout is stopped and answered 504. A failed
bake is answered with its reason and remembered for --backoff seconds, then
tried again.

Policy (--policy FILE, YAML): which repositories and targets may be baked on
demand. WITHOUT ONE, ANY CLIENT THAT CAN PULL AN IR IMAGE MAY MAKE THIS SERVICE
BAKE IT FOR EVERY ARCHSPEC TARGET OF ITS ISA FAMILY (dozens of bakes per tag,
each pushed to the upstream): deploy with one, e.g. bakery/data/registry/lazy-policy.yaml.
A target clang clamps (zen5 baked as zen4) must be allowed as it is resolved too.

  rules:                       # the first rule whose repositories match decides
    - repositories: ["hpc/*", "pi"]      # fnmatch globs
      targets: ["x86_64_v2+"]            # names, "*", or NAME+ (NAME and its descendants)
      slim: true                         # allow <tag>-<target>-slim (default true)

Clients are untrusted: at most --max-connections at once (more get 503), a
request head must arrive within 10 s, a stalled body is cut after 30 s, an idle
keep-alive connection is closed after 30 s; malformed requests and paths with
dot segments or encoded slashes are refused with 400. Lazy bakes use the
service's own registry credentials (auth file, never --upstream's URL), but
only for a client the upstream itself shows the IR image <repo>:<tag>.

GET /metrics is Prometheus text; GET /healthz checks the upstream's /v2/.
Each bake is logged as one JSON line on stderr."""


def setup_parser(sub, parent):
    import argparse

    p = sub.add_parser("serve", parents=[parent], help="registry front that bakes node tags on first pull",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, metavar="URL",
                   help="the registry behind, e.g. http://127.0.0.1:5000 (node tags are pushed there)")
    p.add_argument("--listen", default="127.0.0.1:5001", metavar="HOST:PORT",
                   help="address to serve on (default 127.0.0.1:5001; port 0: any free port)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="bakes run at once (default 1: a bake already uses every core)")
    p.add_argument("--queue", type=int, default=16, metavar="N",
                   help="bakes that may wait for a worker; more get 429 (default 16)")
    p.add_argument("--deadline", type=float, default=300.0, metavar="SECONDS",
                   help="longest a pull waits for its bake before 503 + Retry-After (default 300)")
    p.add_argument("--backoff", type=float, default=30.0, metavar="SECONDS",
                   help="how long a failed bake's error is answered before it is tried again (default 30)")
    p.add_argument("--bake-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="longest a bake may take; past it the bake is stopped, its pulls get 504 and the "
                        "worker takes the next (default 1800)")
    p.add_argument("--max-connections", type=int, default=128, metavar="N",
                   help="client connections at once; more are answered 503 at once (default 128)")
    p.add_argument("--policy", metavar="FILE",
                   help="YAML policy, e.g. bakery/data/registry/lazy-policy.yaml (default: ANY repository, every target)")
    p.add_argument("--jobs", type=int, default=0, help="compile jobs per bake (default: all cores)")
    p.add_argument("--tls-verify", type=common._bool, default=None, metavar="BOOL",
                   help="verify the upstream's TLS (default: true, false for loopback)")
    p.add_argument("--engine", choices=["buildah", "docker", "none"],
                   help="container engine for the bakes (default: $BAKERY_ENGINE, else buildah). 'none': no "
                        "engine, for serve in bakery's own container (a pod): the bundle is read from the layer "
                        "blobs, baked with this container's LLVM and pushed through the registry's API")
    return p


def run(args) -> int:
    from bakery import engines as enginemod
    from bakery.serve import proxy as servemod
    from bakery.serve.lazy import bake_with_engine
    from bakery.serve.metrics import JsonLog
    from bakery.serve.policy import Policy

    policy = Policy.load(args.policy) if args.policy else Policy.default()
    engine = enginemod.get_or_none(args.engine)
    log = JsonLog()
    server = servemod.make_server(upstream=args.upstream, listen=args.listen, bake_fn=bake_with_engine(engine, jobs=args.jobs),
                                  policy=policy, workers=args.workers, queue_size=args.queue, deadline=args.deadline,
                                  backoff=args.backoff, bake_timeout=args.bake_timeout,
                                  max_connections=args.max_connections, tls_verify=args.tls_verify, log=log)
    ok, detail = server.check_upstream()
    if not args.policy:
        log("warning", message="no --policy: any client may have every repository baked for every target of its "
                               "ISA family; deploy with a policy file, e.g. bakery/data/registry/lazy-policy.yaml")
    log("listening", address=server.address, upstream=server.upstream.base, upstream_ok=ok, upstream_detail=detail,
        policy=policy.source, workers=args.workers, queue=args.queue, deadline=args.deadline, backoff=args.backoff,
        bake_timeout=args.bake_timeout, max_connections=args.max_connections)
    if not args.quiet:
        print(f"http://{server.address}", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        log("stopping", address=server.address)
    finally:
        server.server_close()
    sys.stdout.flush()
    return 0
