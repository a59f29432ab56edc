"""The x86-64 ISA level note: a baked binary that needs x86-64-v3 says so in its ELF file.

The x86-64 psABI's program property ``GNU_PROPERTY_X86_ISA_1_NEEDED`` (in an
``NT_GNU_PROPERTY_TYPE_0`` note, section ``.note.gnu.property``, segment ``PT_GNU_PROPERTY``)
names the ISA levels a binary needs. glibc's loader (2.33 and later; Debian 12 has 2.36)
checks it for the program and every library it loads, and refuses to start the program on a
lower CPU with "CPU ISA level is lower than required", instead of letting it die of SIGILL
in the middle of its run. GNU ld writes the note for ``-z x86-64-v3``; lld has no such option.

lld reads every input ``.note.gnu.property`` for the x86 feature bits (IBT/SHSTK) alone and
drops the section; the input notes' ISA properties are lost, and it writes a property
section of its own only for feature bits that every input has. So the bake assembles one
small note object in its work tree, with the note in a section of another name, and a
linker script of one ``OVERWRITE_SECTIONS`` command that makes that section the output's
``.note.gnu.property``; lld then gives it its ``PT_GNU_PROPERTY`` segment (and a
``PT_NOTE``), where GNU ld would put the note. ``OVERWRITE_SECTIONS`` needs no anchor
section and leaves lld's default layout as it is. Every link is checked afterwards: a
linker that lost the note fails the bake.

The level is the target's highest x86-64 level (:func:`bakery.target.best_level`):
``x86_64_v3`` and ``haswell`` need v3, ``zen4`` and ``x86_64_v4`` v4, plain ``x86_64`` the
baseline. Static executables carry the note as well, but glibc checks it in the dynamic
loader only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from bakery import proc
from bakery.errors import BakeryError
from bakery.target import Target, best_level
from bakery.toolchain import Toolchain

NT_GNU_PROPERTY_TYPE_0 = 5
GNU_PROPERTY_X86_ISA_1_NEEDED = 0xC0008002
PT_GNU_PROPERTY = 0x6474E553

# The psABI's GNU_PROPERTY_X86_ISA_1_{BASELINE,V2,V3,V4} bits by archspec level, lowest first.
ISA_BITS = {"x86_64": 0x1, "x86_64_v2": 0x2, "x86_64_v3": 0x4, "x86_64_v4": 0x8}
_BIT_NAMES = {bit: ("baseline" if name == "x86_64" else name.rsplit("_", 1)[1]) for name, bit in ISA_BITS.items()}

SECTION = ".note.bakery.isa"  # not .note.gnu.property: lld would drop it (module docstring)

_ASM = """\
# The x86-64 ISA level this bake needs ({level}), for glibc's loader (bakery.bake.isanote).
\t.section {section},"a",@note
\t.p2align 3
\t.long 4                 # n_namesz: "GNU\\0"
\t.long 16                # n_descsz: one property, 8 + 4 bytes, padded to 8
\t.long {nt:#x}              # NT_GNU_PROPERTY_TYPE_0
\t.asciz "GNU"
\t.long {pr:#x}       # GNU_PROPERTY_X86_ISA_1_NEEDED
\t.long 4                 # pr_datasz
\t.long {bits:#x}              # GNU_PROPERTY_X86_ISA_1_{name}
\t.p2align 3              # pr_data padded to 8 bytes (ELFCLASS64)
\t.section .note.GNU-stack,"",@progbits
"""

_SCRIPT = f"OVERWRITE_SECTIONS {{ .note.gnu.property : {{ KEEP(*({SECTION})) }} }}\n"


def level(target: Target) -> str | None:
    """The x86-64 level (archspec name) a bake for ``target`` needs; None off x86-64."""
    if target.family != "x86_64":
        return None
    return best_level(target.name, list(ISA_BITS))


@dataclass(frozen=True)
class IsaNote:
    level: str
    bits: int
    args: tuple[str, ...]  # added to every link of an executable or a shared library

    def check(self, output: Path) -> None:
        """Refuse a linked ``output`` whose note does not name this level."""
        found = isa_needed(output)
        if found is None or not (found & self.bits):
            raise BakeryError(
                f"the link of {output.name} lost its x86 ISA level note ({describe(self.bits)}): "
                f"it has {describe(found) if found is not None else 'none'}",
                "the linker placed the note object's section elsewhere; `bakery bake --keep` keeps the "
                "work tree, with the note object and its linker script in isa/")


def make(toolchain: Toolchain, target: Target, work: Path) -> IsaNote | None:
    """The note object and linker script for ``target``, in ``work``/isa; None when the target
    is not x86-64."""
    lv = level(target)
    if lv is None:
        return None
    bits = ISA_BITS[lv]
    d = work / "isa"
    d.mkdir(parents=True, exist_ok=True)
    src, obj, script = d / "isa-note.s", d / "isa-note.o", d / "isa-note.ld"
    src.write_text(_ASM.format(level=lv, section=SECTION, nt=NT_GNU_PROPERTY_TYPE_0,
                               pr=GNU_PROPERTY_X86_ISA_1_NEEDED, bits=bits, name=_BIT_NAMES[bits].upper()))
    script.write_text(_SCRIPT)
    proc.run([toolchain.clang, *toolchain.cross_flags, "-c", "-x", "assembler", str(src), "-o", str(obj)], cwd=work)
    return IsaNote(lv, bits, (str(obj), f"-Wl,--script={script}"))


def describe(bits: int) -> str:
    names = [f"x86-64-{n}" for b, n in sorted(_BIT_NAMES.items()) if bits & b]
    return ", ".join(names) or f"{bits:#x}"


def isa_needed(path: Path) -> int | None:
    """The ``GNU_PROPERTY_X86_ISA_1_NEEDED`` bits of the ELF64 little-endian file ``path``, as
    the loader finds them (its ``PT_GNU_PROPERTY`` segment); None when it has none."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
            if p_type == PT_GNU_PROPERTY:
                f.seek(p_offset)
                return _needed(f.read(min(p_filesz, 1 << 16)))
    return None


def _needed(notes: bytes) -> int | None:
    found = None
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        name_at = pos + 12
        desc_at = name_at + _align(namesz, 4)  # "GNU\0": the desc starts 8-aligned
        name = notes[name_at:name_at + namesz]
        if ntype == NT_GNU_PROPERTY_TYPE_0 and name == b"GNU\0":
            q, end = desc_at, min(desc_at + descsz, len(notes))
            while q + 8 <= end:
                pr_type, pr_datasz = struct.unpack_from("<II", notes, q)
                if pr_type == GNU_PROPERTY_X86_ISA_1_NEEDED and pr_datasz == 4 and q + 12 <= end:
                    found = (found or 0) | struct.unpack_from("<I", notes, q + 8)[0]
                q += 8 + _align(pr_datasz, 8)
        pos = desc_at + _align(descsz, 8)
    return found


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)
