#!/usr/bin/env bash
# The main job end to end, with the embedded defaults: a local registry on
# 127.0.0.1 that bakery starts itself, Debian base images made once with
# debootstrap. build -> push (IR image + plan artifact) -> bake for this node
# (archspec detection) -> run the baked binary from the registry image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
set -x
bakery validate examples/*/recipe.yaml
bakery build examples/kernel/recipe.yaml                 # IR image + plan, pushed to the embedded registry
ref=$(bakery registry status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')/kernel:1.0
bakery inspect "$ref"
node=$(bakery bake "$ref" --target native)              # commits one thin layer, pushes <tag>-<target>
bakery bake "$ref" --target native                       # second time: the tag is reused, nothing compiles
skopeo inspect --tls-verify=false "docker://${node%@*}" | grep -c sha256: || true
ctr=$(buildah from -q --tls-verify=false "${node%@*}")
buildah run --isolation=chroot "$ctr" -- kernel 2000      # the baked binary, from the registry image
buildah rm "$ctr" >/dev/null
bakery bench examples/kernel/recipe.yaml --target native --repeat 5
