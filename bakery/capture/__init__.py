"""Capture: run the app's own build with bakery's wrappers and keep every unit's bitcode.

run (orchestration), sources (fetching), flags (stdlib-only tables, which the plan imports too),
attrs (stdlib-only patterns of clang's target attributes, which the bake imports too), wrapper (stdlib only: the compiler wrapper itself). ``capture`` and ``from_source`` are loaded
from run on first use, so that importing ``bakery.capture.flags`` loads nothing else.
"""

from __future__ import annotations

_LAZY = {"capture", "from_source", "run_build", "build_commands", "write_shims"}


def __getattr__(name: str):
    if name in _LAZY:
        from bakery.capture import run

        return getattr(run, name)
    raise AttributeError(f"module 'bakery.capture' has no attribute {name!r}")
