"""The recipe: its contract (schema.json) and loading with line-numbered errors."""

from __future__ import annotations

from bakery.recipe.loader import (  # noqa: F401
    MAX_BYTES,
    MAX_DEPTH,
    MAX_REPORTED,
    Bench,
    Build,
    KeyPath,
    Problem,
    Recipe,
    Source,
    load,
    schema,
)
