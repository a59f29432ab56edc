"""The LLVM toolchain that captures and bakes: Debian's versioned LLVM packages.

Bitcode can be read by the same or a newer LLVM only, so the toolchain's major
version travels in the plan and the bake checks it.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BakeryError
from . import proc

DEFAULT_LLVM = 16


def default_major() -> int:
    value = os.environ.get("BAKERY_LLVM_VERSION", str(DEFAULT_LLVM))
    if not value.isdigit():
        raise BakeryError(f"BAKERY_LLVM_VERSION={value!r} is not an LLVM major version", "e.g. BAKERY_LLVM_VERSION=16")
    return int(value)


@dataclass(frozen=True)
class Toolchain:
    major: int
    bindir: Path

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
    def triple(self) -> str:
        return proc.run([self.clang, "-dumpmachine"]).stdout.strip()

    @property
    def family(self) -> str:
        """archspec family name of the triple's ISA (x86_64, aarch64, ...)."""
        arch = self.triple.split("-")[0]
        return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)


def find(major: int | None = None) -> Toolchain:
    major = major or default_major()
    bindir = Path(os.environ.get("BAKERY_LLVM_BINDIR", f"/usr/lib/llvm-{major}/bin"))
    tc = Toolchain(major, bindir)
    tc.clang  # fail early with the install hint
    return tc
