#!/usr/bin/env bash
# The embedded registry and `bakery serve` side by side, on one machine:
#
#   nodes pull  127.0.0.1:5001/<app>:<tag>-<target>  (bakery serve, the front)
#                  |  passes everything through, bakes a missing node tag once
#                  v
#               127.0.0.1:5000  (CNCF distribution: `bakery registry start`; bakes are pushed here)
#
# Usage: registry/run-lazy.sh [bakery serve options...]
#   REGISTRY_PORT=5000 SERVE_LISTEN=127.0.0.1:5001 registry/run-lazy.sh --workers 1
# The policy is bakery/data/registry/lazy-policy.yaml (edit it to your repositories and targets) unless the
# options name one with --policy (docs/security.md).
# The registry keeps running in the background when the service stops (`bakery registry stop`).
set -euo pipefail

REGISTRY_PORT="${REGISTRY_PORT:-5000}"
SERVE_LISTEN="${SERVE_LISTEN:-127.0.0.1:5001}"
BAKERY="${BAKERY:-bakery}"

# Prints the registry's address; an embedded registry already running is reused where it is.
upstream="$("$BAKERY" -q registry start --port "$REGISTRY_PORT")"
echo "run-lazy: registry on $upstream, bakery serve on $SERVE_LISTEN" >&2

policy=()
case " $* " in *" --policy "*|*" --policy="*) ;; *) policy=(--policy "$(dirname "$0")/../bakery/data/registry/lazy-policy.yaml") ;; esac
exec "$BAKERY" serve --upstream "http://$upstream" --listen "$SERVE_LISTEN" "${policy[@]}" "$@"
