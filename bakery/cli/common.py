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


def timeout_option(p) -> None:
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="image: stop a bake that runs longer (default $BAKERY_BAKE_TIMEOUT, else 7200)")


def target_list(text: str) -> list[str]:
    """--targets T1,T2,...: the names, each once."""
    from bakery.errors import BakeryError

    targets = [t.strip() for t in text.split(",") if t.strip()]
    if len(set(targets)) != len(targets):
        raise BakeryError("--targets names a target twice")
    return targets


def registry_for(args, reference: str) -> str:
    """The registry a command talks to: --registry, else the one the reference names, else the
    default ($BAKERY_REGISTRY or the embedded one)."""
    from bakery import oci
    from bakery.images import registry as registrymod

    return args.registry or ("" if oci.names_registry(reference) else registrymod.default_registry())
