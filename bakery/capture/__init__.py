"""Capture: run the app's own build with bakery's wrappers and keep every unit's bitcode.

run (orchestration), sources (fetching), flags (stdlib-only tables), wrapper (stdlib only: the
compiler wrapper itself)."""

from __future__ import annotations

from bakery.capture.run import (  # noqa: F401
    WRAPPER,
    CC_NAMES,
    CXX_NAMES,
    write_shims,
    build_commands,
    run_build,
    capture,
    from_source,
)
