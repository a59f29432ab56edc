"""Flag tables shared by the capture wrapper and the plan's trust checks: one source for both.

Standard library only: the wrapper (``python3 -I -S wrapper.py``) imports this file from its
own folder, and the plan imports it as ``bakery.capture.flags``.
"""

from __future__ import annotations

import hashlib

# The host CPU must not leak into the bitcode: the bake chooses the target.
HOST_CPU_PREFIXES = ("-march=", "-mcpu=", "-mtune=", "-mnative")

# clang 16 makes these errors in C, where Debian's gcc 12 (the system's C compiler, which
# configure probes and hand-written build checks were written against) only warns. Under
# capture they are warnings again, so that `echo 'int main(){ futimens(); }' | $CC -x c -`
# answers as with gcc, unless the build asks for -Werror (then gcc errors too) or the recipe
# asks for strict C (capture.strict_c).
PERMISSIVE_C = ("-Wno-error=implicit-function-declaration", "-Wno-error=implicit-int",
                "-Wno-error=int-conversion", "-Wno-error=incompatible-function-pointer-types",
                "-Wno-error=return-type")

# A unit compiled with one of these gets another pipeline than -O2/-O3's, so its optimization is
# not split between capture and bake (bakery.passes).
PIPELINE_FLAGS = frozenset({"-fno-vectorize", "-fno-slp-vectorize", "-fno-unroll-loops", "-fno-inline",
                            "-fno-inline-functions", "-finline-hint-functions", "-fno-builtin", "-ffreestanding"})
SPLIT_LEVELS = ("-O2", "-O3")


def split_level(flags) -> str | None:
    """The -O level whose pipeline a unit with these flags runs split (capture, then bake), or
    None: another level (-O1, -Os, -Oz, -Ofast), or a flag that changes the pipeline."""
    opts = [f for f in flags if f.startswith("-O")]
    level = {"-O": "-O2"}.get(opts[-1], opts[-1]) if opts else None
    if level not in SPLIT_LEVELS or any(f in PIPELINE_FLAGS or f.startswith("-fno-builtin-") for f in flags):
        return None
    return level


RPATH_OPTIONS = frozenset({"-rpath", "--rpath", "-R", "-rpath-link", "--rpath-link"})
SONAME_OPTIONS = frozenset({"-soname", "-h", "--soname"})
# Linker options that name a file: the capture copies it into the bundle. A plan may pass only
# BAKE_FILE_OPTIONS (no linker scripts: they can read any file, INPUT() and INCLUDE).
LINKER_FILE_OPTIONS = ("--version-script", "-version-script", "-T", "--script", "--dynamic-list")
BAKE_FILE_OPTIONS = ("--version-script", "-version-script", "--dynamic-list")
# Options whose value may come as the next linker token (``-Wl,-soname -Wl,libx.so.1``): the
# capture merges the two, the plan checks them as one.
LINKER_VALUE_OPTIONS = (RPATH_OPTIONS | SONAME_OPTIONS | {"-z", "--hash-style", "--compress-debug-sections"}
                        | frozenset(LINKER_FILE_OPTIONS))
# Options the plan also reads a value for (``--build-id=sha1``, ``--icf=all``, ``-O1``).
LINKER_EQ_OPTIONS = frozenset({"--build-id", "--icf", "-O"})


def sha256_file(path: str | int) -> str:
    """The hex sha256 of a file, by path or of an open descriptor (read from its offset, left open)."""
    h = hashlib.sha256()
    with open(path, "rb", closefd=not isinstance(path, int)) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
