"""The recipe: its contract (schema.json) and loading with line-numbered errors."""

from __future__ import annotations

from bakery.recipe.loader import (  # noqa: F401
    KeyPath,
    Problem,
    MAX_REPORTED,
    MAX_BYTES,
    MAX_DEPTH,
    Source,
    Build,
    Bench,
    Recipe,
    schema,
    load,
)
