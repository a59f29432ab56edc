#!/usr/bin/env bash
# The main job end to end on a bundled example: capture the kernel example's
# real build as bitcode, bake it for this node (archspec detection), run it,
# then benchmark it against from-source builds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d /tmp/bakery-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
set -x
bakery validate examples/*/recipe.yaml
bakery capture examples/kernel/recipe.yaml -o "$work/kernel.bundle"
bakery bake "$work/kernel.bundle" --target native --output "$work/bin"
examples/kernel/verify "$work/bin"
bakery bench examples/kernel/recipe.yaml --target native --repeat 5
