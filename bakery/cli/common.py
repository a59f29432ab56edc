"""Options several subcommands share."""

import argparse


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def registry_options(p) -> None:
    p.add_argument("--registry", help="registry HOST[:PORT] (default: $BAKERY_REGISTRY, else the embedded one)")
    p.add_argument("--tls-verify", type=_bool, default=None, metavar="BOOL",
                   help="verify TLS (default: true, false for loopback registries); credentials come from "
                        "the containers auth file or the docker config, never from the command line")
    p.add_argument("--engine", choices=["buildah", "docker", "none"],
                   help="container engine (default: $BAKERY_ENGINE, else buildah when installed, else a "
                        "Docker-compatible daemon on $DOCKER_HOST or the usual sockets). bake IMAGE only: "
                        "'none' reads the bundle from the image's layers and pushes the node layer through "
                        "the registry's API, baking with this machine's LLVM: for bakery running in its own "
                        "container (a Kubernetes pod), which is then the sandbox")
