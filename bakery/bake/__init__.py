"""Bake: finish a captured build for one CPU (retarget, optimize, generate code, link)."""

from __future__ import annotations

from bakery.bake.retarget import (  # noqa: F401
    retarget_ir,
    asm_problem,
)
from bakery.bake.pipeline import (  # noqa: F401
    LTO_MODES,
    BakeResult,
    check_toolchain,
    bake,
    choose_variant,
)
