"""The per-function target attributes clang writes into IR (text form): one set of patterns for
the capture, which takes the baseline ones out once, and the bake's text path, which rewrites
them (:mod:`bakery.bake.retarget`).

Standard library only: the wrapper (``python3 -I -S wrapper.py``) imports this file from its own
folder.
"""

from __future__ import annotations

import re

ATTR_LINE = re.compile(r"^attributes #\d+ = \{.*\}$", re.M)
TARGET_CPU = re.compile(r' "target-cpu"="[^"]*"')
TUNE_CPU = re.compile(r' "tune-cpu"="[^"]*"')
FEATURES = re.compile(r' "target-features"="([^"]*)"')


def features_of(text: str) -> set[str]:
    """The target-features of the first attribute group that has them (a probe's baseline)."""
    m = FEATURES.search(text)
    return set(m.group(1).split(",")) if m else set()


def untarget(text: str, baseline: set[str]) -> str:
    """IR text whose functions carry no ``target-cpu`` or ``tune-cpu``, and in ``target-features``
    only what a function asks beyond ``baseline`` (its own ``__attribute__((target(...)))``),
    so that the bake's -mcpu/-mattr (opt) or -march (clang) decide the rest."""
    def own(f: re.Match) -> str:
        extra = [x for x in f.group(1).split(",") if x and x not in baseline]
        return f' "target-features"="{",".join(extra)}"' if extra else ""

    def fix(m: re.Match) -> str:
        line = m.group(0)
        if '"target-' not in line and '"tune-cpu"' not in line:
            return line
        return FEATURES.sub(own, TUNE_CPU.sub("", TARGET_CPU.sub("", line)))

    return ATTR_LINE.sub(fix, text)
