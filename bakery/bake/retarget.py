"""Per-function target attributes out, the target in; and the checks of what the IR may ask of the
assembler and the linker (module and inline asm, dependent libraries)."""

from __future__ import annotations

import collections
import re

from bakery.capture.attrs import ATTR_LINE as _ATTR_LINE
from bakery.capture.attrs import FEATURES as _FEATURES
from bakery.capture.attrs import TARGET_CPU as _TARGET_CPU
from bakery.capture.attrs import TUNE_CPU as _TUNE_CPU

_DEFINE = re.compile(r"^define [^\n]*", re.M)
_GROUP_REF = re.compile(r"#(\d+)\b")


def retarget_ir(text: str, tune: str | None, *, untargeted: bool = False) -> tuple[str, dict]:
    """Rewrite the target attributes of an LLVM IR module (text form).

    * ``target-cpu`` goes: the bake's ``-march``/``-mcpu`` applies instead.
    * ``tune-cpu`` becomes the target's tuning (or goes), as a from-source build
      with the same flags would write it.
    * ``target-features`` equal to the module's baseline (what the command line
      gave every function) go; any other value is a function's own
      ``__attribute__((target(...)))`` and is kept.
    * ``untargeted``: the capture took the baseline out already (:mod:`bakery.capture.attrs`),
      and every ``target-features`` left is a function's own; the tuning is added to the
      attribute groups of the functions defined here.
    """
    counts = collections.Counter(m.group(1) for m in _FEATURES.finditer(text))
    baseline = counts.most_common(1)[0][0] if counts and not untargeted else None
    stats = {"attribute_groups": 0, "kept_features": 0}
    defined = {int(g) for line in _DEFINE.findall(text) for g in _GROUP_REF.findall(line)} \
        if untargeted and tune else set()

    def fix(m: re.Match) -> str:
        line = rewrite(m.group(0))
        if defined and '"tune-cpu"' not in line and int(line.split()[1][1:]) in defined:
            line = f'{line[:-1].rstrip()} "tune-cpu"="{tune}" }}'
        return line

    def rewrite(line: str) -> str:
        if '"target-cpu"' not in line and '"target-features"' not in line and '"tune-cpu"' not in line:
            return line
        stats["attribute_groups"] += 1
        line = _TARGET_CPU.sub("", line)
        line = _TUNE_CPU.sub(f' "tune-cpu"="{tune}"' if tune else "", line)

        def feat(f: re.Match) -> str:
            if f.group(1) == baseline:
                return ""
            stats["kept_features"] += 1
            return f.group(0)

        return _FEATURES.sub(feat, line)

    return _ATTR_LINE.sub(fix, text), stats


# Assembler directives that read a file of the baking node into the object (.incbin, .include),
# or build directive names from text (.irp/.irpc substitute into names, macros expand).
_ASM_DENY = re.compile(r"\.\s*(incbin|include|irpc?|macro|altmacro)\b", re.I)
# An operand pasted into a directive's name (".inc${0:c}" with a symbol operand named "bin").
_ASM_OPERAND_NAME = re.compile(r"(^|[\n;])\s*\.[\w.]*\$(\d|\{\d)")
_IR_STRING = r'"((?:[^"\\]|\\.)*)"'
_MODULE_ASM = re.compile(r"^module asm " + _IR_STRING, re.M)
_INLINE_ASM = re.compile(r"\basm\s+(?:(?:sideeffect|alignstack|inteldialect|unwind)\s+)*" + _IR_STRING)
_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2})")
# Named metadata lld acts on: .deplibs entries are opened as files or searched as -l (also
# switched off at link with --no-dependent-libraries).
_LINKER_METADATA = re.compile(r"^!llvm\.(dependent-libraries|linker\.options)\s*=", re.M)


def asm_problem(text: str) -> str | None:
    """Why the module asm or inline asm of an IR module (llvm-dis text) is refused, or None."""
    for m in (*_MODULE_ASM.finditer(text), *_INLINE_ASM.finditer(text)):
        asm = _ESCAPE.sub(lambda e: chr(int(e.group(1), 16)), m.group(1))  # LLVM writes \22 for ", \0A for newline
        bad = _ASM_DENY.search(asm)
        if bad:
            return f"its assembly uses {bad.group(0).strip()!r}, which reads files or builds directives"
        if _ASM_OPERAND_NAME.search(asm):
            return "its inline assembly builds a directive name from an operand"
    meta = _LINKER_METADATA.search(text)
    if meta:
        return f"it asks the linker for libraries itself (!llvm.{meta.group(1)})"
    return None
