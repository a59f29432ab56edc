"""Bake: finish a captured build for one CPU (retarget, optimize, generate code, link)."""

from __future__ import annotations

from bakery.bake.pipeline import (  # noqa: F401
    LTO_MODES,
    PHASES,
    BakeResult,
    bake,
    check_toolchain,
    choose_variant,
)
from bakery.bake.retarget import (  # noqa: F401
    asm_problem,
    retarget_ir,
)
