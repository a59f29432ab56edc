#!/usr/bin/env bash
# Install everything bakery needs on Debian 12 (bookworm); safe to run again.
# System tools from Debian, Python packages into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
LLVM="${BAKERY_LLVM_VERSION:-16}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

PKGS=(clang-$LLVM llvm-$LLVM lld-$LLVM flang-$LLVM libomp-$LLVM-dev libclang-rt-$LLVM-dev make cmake meson ninja-build autoconf automake libtool binutils git zstd gsl-bin libopenmpi-dev openmpi-bin
      dpkg-dev python3-venv python3-pip buildah skopeo docker-registry debootstrap podman runc
      qemu-user-static binfmt-support libc6-dev-arm64-cross libstdc++-12-dev-arm64-cross libgcc-12-dev-arm64-cross)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done

# Debian source packages (recipes/ builds real third-party code from them)
# need deb-src entries; add bookworm's if there are none.
if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(grep -rhs "^URIs:" /etc/apt/sources.list.d/debian.sources | head -1 | awk '{print $2}')
  if [ -n "$uri" ]; then
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" | $SUDO tee /etc/apt/sources.list.d/bakery-deb-src.sources >/dev/null
    need_update=1
  fi
fi
if [ ${#missing[@]} -gt 0 ] || [ -n "${need_update:-}" ]; then
  echo "setup: installing ${missing[*]:-(apt lists only)}"
  $SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Cross-built programs (arm64 bakes, configure checks of cross captures) run
# through qemu-user: register its binfmt handlers when the kernel allows it.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  $SUDO update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -m pip install -q -e '.[test]' > .venv/pip.log 2>&1; then
  cat .venv/pip.log >&2; exit 1
fi
echo "setup: ok ($(.venv/bin/bakery --version), clang $(clang-$LLVM -dumpversion))"
