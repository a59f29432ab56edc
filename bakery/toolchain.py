"""The LLVM toolchain that captures and bakes: Debian's versioned LLVM packages.

Bitcode can be read by the same or a newer LLVM only, so the toolchain's major
version travels in the plan and the bake checks it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from bakery import proc
from bakery.config import DEFAULT_LLVM, Settings  # noqa: F401  (DEFAULT_LLVM: re-exported)
from bakery.errors import BakeryError
from bakery.platforms import platform_of_family, triple_of_platform  # noqa: F401  (re-exported)


def default_major() -> int:
    return Settings.from_env().llvm_version


# Debian's cross sysroots that clang --target=TRIPLE finds by itself.
CROSS_PACKAGES = {"aarch64-linux-gnu": "libc6-dev-arm64-cross libstdc++-12-dev-arm64-cross libgcc-12-dev-arm64-cross",
                  "x86_64-linux-gnu": "libc6-dev-amd64-cross libstdc++-12-dev-amd64-cross libgcc-12-dev-amd64-cross"}


@dataclass(frozen=True)
class Toolchain:
    major: int
    bindir: Path
    target_triple: str | None = None   # cross compilation: clang --target=

    def tool(self, name: str) -> str:
        path = self.bindir / name
        if not path.exists():
            raise BakeryError(
                f"{name} from LLVM {self.major} not found in {self.bindir}",
                f"install it with: apt-get install clang-{self.major} llvm-{self.major} lld-{self.major}",
            )
        return str(path)

    @property
    def clang(self) -> str:
        return self.tool("clang")

    @property
    def clangxx(self) -> str:
        return self.tool("clang++")

    @property
    def flang(self) -> str:
        for name in ("flang-new", "flang"):
            if (self.bindir / name).exists():
                return str(self.bindir / name)
        raise BakeryError(f"flang for LLVM {self.major} not found", f"install it with: apt-get install flang-{self.major}")

    @property
    def fortran_link_flags(self) -> list[str]:
        """Debian's flang-new does not find its own runtime libraries by itself."""
        return [f"-L{self.bindir.parent / 'lib'}"]

    def driver(self, lang: str) -> str:
        return self.clangxx if lang == "c++" else self.flang if lang == "fortran" else self.clang

    @functools.cached_property
    def version(self) -> str:
        """Full version such as 16.0.6 (archspec decides flags by it)."""
        out = proc.run([self.clang, "--version"]).stdout
        m = re.search(r"clang version (\d+\.\d+\.\d+)", out)
        if not m:
            raise BakeryError(f"cannot read the clang version from: {out.splitlines()[0] if out else '(nothing)'}")
        return m.group(1)

    @functools.cached_property
    def host_triple(self) -> str:
        return proc.run([self.clang, "-dumpmachine"]).stdout.strip()

    @property
    def triple(self) -> str:
        return self.target_triple or self.host_triple

    @property
    def is_cross(self) -> bool:
        return self.triple.split("-")[0] != self.host_triple.split("-")[0]

    @property
    def cross_flags(self) -> list[str]:
        """Added to every compile and link of a cross capture or bake."""
        if not self.is_cross:
            return []
        return [f"--target={self.triple}", "-fuse-ld=lld", "-Wno-unused-command-line-argument"]

    def for_triple(self, triple: str | None) -> Toolchain:
        if not triple or triple.split("-")[0] == self.host_triple.split("-")[0]:
            return self
        tc = Toolchain(self.major, self.bindir, triple)
        sysroot = Path("/usr") / triple
        if not (sysroot / "include").exists():
            raise BakeryError(f"no {triple} sysroot in {sysroot}",
                              f"install it with: apt-get install {CROSS_PACKAGES.get(triple, 'the cross -dev packages')}")
        return tc

    @property
    def run_env(self) -> dict[str, str]:
        """Lets a cross build run the programs it makes (configure checks) through qemu-user."""
        return {"QEMU_LD_PREFIX": f"/usr/{self.triple}"} if self.is_cross else {}

    @property
    def family(self) -> str:
        """archspec family name of the triple's ISA (x86_64, aarch64, ...)."""
        arch = self.triple.split("-")[0]
        return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)


def find(major: int | None = None) -> Toolchain:
    major = major or default_major()
    bindir = Settings.from_env().llvm_bindir or Path(f"/usr/lib/llvm-{major}/bin")
    tc = Toolchain(major, bindir)
    _ = tc.clang  # fail early with the install hint
    return tc
