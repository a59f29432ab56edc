"""bakery's command line: one module per subcommand, ``main(argv=None) -> int``.

Exit codes: 0 success, 1 error, 2 bad recipe or usage, 3 refused plan,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from bakery import __version__
from bakery.cli import (
    bake,
    base,
    bench,
    build,
    capture,
    check,
    inspect,
    k8s,
    matrix,
    profile,
    publish,
    registry,
    serve,
    targets,
    validate,
)
from bakery.errors import BakeryError

COMMANDS = (validate, capture, build, bake, profile, publish, check, inspect, registry, base, bench, targets, serve, matrix, k8s)

DESCRIPTION = """\
bakery makes one container image serve every CPU.

  1. capture: run an app's own build with bakery's compiler wrappers and keep
     every translation unit as pre-optimization LLVM bitcode, plus a bake plan
     (flags, link lines, toolchain) -> a bundle directory.
  2. bake: finish that bitcode for one CPU (an archspec name or 'native'):
     retarget, optimize, codegen, link -> native binaries.

With images, the same two steps meet users through a registry:
  build    runs the capture in a Containerfile and pushes an IR image (runtime +
           LLVM + bundle) with the plan attached as an OCI artifact;
  bake     IMAGE commits the binaries as one thin layer on the IR image and
           pushes it as the node tag <tag>-<target> (reused when it exists);
  publish  writes one tag for every CPU: an OCI index of the IR image (the
           fallback) and the bakes of the ISA levels as platform variants, which
           containerd, podman --variant and skopeo resolve themselves;
  serve    bakes a node tag the first time anybody pulls it.
Each node tag carries the CPU features its binaries need as a node-feature-discovery
image compatibility artifact: `bakery check TAG` (or NFD's `nfd compat validate-node`)
tells whether this host, or a node by its labels, can run it.
The IR image runs as it is: `podman run IMAGE ARGS` finishes the app for the
CPU it starts on (a cache volume at /var/cache/bakery, else the node tag, else
a bake in the container; once per CPU type), then runs it (docs/launcher.md).
Without --registry (or $BAKERY_REGISTRY), bakery starts its own registry on
127.0.0.1:5000.

examples:
  bakery validate examples/pi/recipe.yaml
  bakery capture examples/pi/recipe.yaml -o /tmp/pi.bundle
  bakery bake /tmp/pi.bundle --target native --output /tmp/pi.bin
  bakery bench examples/kernel/recipe.yaml --target x86_64_v4

  bakery build examples/pi/recipe.yaml            # -> 127.0.0.1:5000/pi:1.0
  bakery bake 127.0.0.1:5000/pi:1.0 --target native
  bakery publish 127.0.0.1:5000/pi:1.0 --targets x86_64_v2,x86_64_v3,x86_64_v4
  bakery serve --upstream http://127.0.0.1:5000 --listen 127.0.0.1:5080
  podman run -v bakery-cache:/var/cache/bakery 127.0.0.1:5000/pi:1.0 1000000

Each command has its own --help.
"""


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: the options work before and after the subcommand, and a
    # subcommand's default does not undo `bakery --debug CMD`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and keep work trees")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress messages on stderr")
    parser = argparse.ArgumentParser(prog="bakery", description=DESCRIPTION, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    parser.add_argument("--version", action="version", version=f"bakery {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        p = module.setup_parser(sub, common)
        p.set_defaults(run=module.run)
    return parser


class _Format(logging.Formatter):
    """Progress as plain lines; warnings and worse say so, as errors do."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"bakery: {record.levelname.lower()}: {text}"


_handler: logging.Handler | None = None


def configure_logging(*, quiet: bool = False, debug: bool = False) -> None:
    """The one place log levels are set: progress (INFO) on stderr, stdout stays machine-readable;
    -q leaves warnings and errors, --debug adds DEBUG. A new call replaces the last one's handler."""
    global _handler
    logger = logging.getLogger("bakery")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_Format("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


TRAILING = {"profile"}  # commands that run a command given after "--", which argparse must not see


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    trailing: list[str] = []
    if "--" in argv and TRAILING & set(argv[:argv.index("--")]):
        argv, trailing = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = parser.parse_args(argv)
    args.trailing = trailing
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    configure_logging(quiet=args.quiet, debug=args.debug)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args) or 0
    except BakeryError as e:
        if args.debug:
            traceback.print_exc()
        print(f"bakery: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"bakery: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `bakery targets | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("bakery: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
