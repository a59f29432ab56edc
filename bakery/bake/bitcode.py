"""A reader of LLVM's bitstream container that answers one question about untrusted bitcode: may
it go to opt and clang as it is, without the textual round trip (llvm-dis, the checks of
:mod:`bakery.bake.retarget`)?

It may when it is *plain*: one module, no module asm, no inline asm, none of the named metadata
lld acts on (``llvm.dependent-libraries``, ``llvm.linker.options``), and no function attribute
group with a baseline ``target-cpu`` or ``tune-cpu`` (the capture took them out; a stale one
would silently keep a function generic). Anything else, and anything this reader does not
follow exactly as LLVM's reader would, is *not plain*: the bake then takes the text path, which
refuses what must be refused. So a mistake here costs speed, never safety, as long as a module
called plain holds nothing LLVM would read as assembly.

The rules that keep the two readers in step (LLVM's reader jumps; this one reads every bit in
order):

* every block is read record by record to its END_BLOCK, which must be where its length word
  says; no block is skipped by its length;
* one block info block, in the module block (LLVM's reader lets a second one replace the first,
  and ignores one elsewhere);
* LLVM finds function bodies through the value symbol table (``VST_CODE_FNENTRY`` offsets, and
  ``MODULE_CODE_VSTOFFSET`` for the table itself): each such offset must be the start of a
  function block (resp. the table) read here, with its block id in one 8-bit chunk, as LLVM
  assumes when it jumps past it.

The format: https://llvm.org/docs/BitCodeFormat.html
"""

from __future__ import annotations

from dataclasses import dataclass, field

_WRAPPER_MAGIC = 0x0B17C0DE
_MAGIC = b"BC\xc0\xde"

# Block ids (llvm/Bitcode/LLVMBitCodes.h)
_BLOCKINFO, _MODULE, _PARAMATTR_GROUP, _CONSTANTS, _FUNCTION, _IDENTIFICATION = 0, 8, 10, 11, 12, 13
_VALUE_SYMTAB, _METADATA, _STRTAB, _SYMTAB = 14, 15, 23, 25
# Records
_MODULE_ASM, _MODULE_VSTOFFSET = 4, 13
_VST_FNENTRY = 3
_METADATA_NAME = 4
_GRP_ENTRY = 3
# Constants records that are not inline asm (INLINEASM_OLD 18, OLD2 23, OLD3 28, INLINEASM 30):
# an unknown code is not plain either.
_CONSTANTS_OK = frozenset(range(1, 30)) - {18, 23, 28}
_LINKER_METADATA = (b"llvm.dependent-libraries", b"llvm.linker.options")
_TARGET_KEYS = (b"target-cpu", b"tune-cpu")

_MAX_DEPTH = 16
_VBR6_ENDS = sum(1 << (6 * k + 5) for k in range(10))   # the high bit of ten VBR-6 chunks
# Blocks whose records are looked at by their code alone, but for these codes (the rest of
# such a record is stepped over, not kept): a function's instructions, constants, metadata.
_OPS_WANTED: dict[int, frozenset[int]] = {_FUNCTION: frozenset(), _CONSTANTS: frozenset(),
                                          _METADATA: frozenset({_METADATA_NAME})}


class NotPlain(Exception):
    """Why a module must take the text path."""


@dataclass
class _Abbrev:
    ops: list[tuple[str, int]]   # ("lit", v) ("fixed", w) ("vbr", w) ("array", 0) ("char6", 0) ("blob", 0)


@dataclass
class _State:
    blockinfo: dict[int, list[_Abbrev]] = field(default_factory=dict)
    function_starts: set[int] = field(default_factory=set)
    fn_entries: list[int] = field(default_factory=list)   # word offsets from VST FNENTRY
    vst_starts: list[int] = field(default_factory=list)
    vst_offset: int | None = None
    modules: int = 0
    blockinfos: int = 0
    base: int = 0                                         # bit where the identification/module block starts


class _Bits:
    """Bits in LLVM's order: 64-bit little-endian words, least significant bit first."""
    __slots__ = ("data", "words", "pos", "end")

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end
        pad = -len(data) % 8 + 8  # a whole word past the end: reads need no bounds test of their own
        self.words = memoryview(data + bytes(pad)).cast("Q")

    def fixed(self, n: int) -> int:
        p = self.pos
        e = p + n
        if e > self.end:
            raise NotPlain("truncated bitcode")
        self.pos = e
        off = p & 63
        v = self.words[p >> 6] >> off
        if off + n > 64:
            v |= self.words[(p >> 6) + 1] << (64 - off)
        return v & ((1 << n) - 1)

    def vbr(self, n: int) -> int:
        # vbrs(n, 1)[0] would do, but this runs for every abbrev id and header field: its own
        # loop keeps GSL's scan at 6.6 s of CPU, against 7.2 s through vbrs.
        if n < 2 or n > 32:
            raise NotPlain(f"a VBR width of {n}")
        words, p = self.words, self.pos
        hi = 1 << (n - 1)
        low, mask = hi - 1, (1 << n) - 1
        value = shift = 0
        while True:
            off = p & 63
            window = words[p >> 6] >> off
            if off + n > 64:
                window |= words[(p >> 6) + 1] << (64 - off)
            chunk = window & mask
            p += n
            value |= (chunk & low) << shift
            if not chunk & hi:
                if p > self.end:
                    raise NotPlain("truncated bitcode")
                self.pos = p
                return value
            shift += n - 1
            if shift > 64:
                raise NotPlain("a VBR value over 64 bits")

    def vbrs(self, n: int, count: int) -> list[int]:
        """``count`` VBR-``n`` values (a record's operands, an array)."""
        if n < 2 or n > 32:
            raise NotPlain(f"a VBR width of {n}")
        words, p, end = self.words, self.pos, self.end
        hi = 1 << (n - 1)
        low, mask = hi - 1, (1 << n) - 1
        out = []
        for _ in range(count):
            value = shift = 0
            while True:
                off = p & 63
                window = words[p >> 6] >> off
                if off + n > 64:
                    window |= words[(p >> 6) + 1] << (64 - off)
                chunk = window & mask
                p += n
                value |= (chunk & low) << shift
                if not chunk & hi:
                    break
                shift += n - 1
                if shift > 64:
                    raise NotPlain("a VBR value over 64 bits")
            if p > end:
                raise NotPlain("truncated bitcode")
            out.append(value)
        self.pos = p
        return out

    def entry(self, width: int, block_end: int, wanted: frozenset[int] | None) -> tuple[int, int, list[int]]:
        """The next abbrev id of ``width`` bits; for an UNABBREV_RECORD (id 3) also the record,
        [code: vbr6, count: vbr6, ops: vbr6 x count], with its ops stepped over when ``wanted``
        does not have the code. Most records of a function have a code and a count of one or
        two chunks each: those are read here from one window, as :meth:`vbr` would read them."""
        p = self.pos
        off = p & 63
        window = self.words[p >> 6] >> off
        if off:
            window |= self.words[(p >> 6) + 1] << (64 - off)
        aid = window & ((1 << width) - 1)
        if aid != 3:
            self.fixed(width)   # with its bounds check
            return aid, 0, []
        used = width
        vals = []
        for _ in range(2):  # the code and the count, from the 64-bit window (width <= 32)
            c0 = (window >> used) & 63
            if c0 < 32:
                vals.append(c0)
                used += 6
                continue
            c1 = (window >> (used + 6)) & 63
            if c1 >= 32:
                break
            vals.append((c0 & 31) | (c1 << 5))
            used += 12
        if len(vals) == 2 and p + used <= self.end:
            code, n = vals
            self.pos = p + used
        else:
            self.fixed(width)
            code = self.vbr(6)
            n = self.vbr(6)
        if n > (block_end - self.pos):
            raise NotPlain("a record longer than its block")
        if wanted is not None and code not in wanted:
            self.skip_vbrs(6, n)
            return 3, code, []
        return 3, code, self.vbrs(6, n)

    def skip_vbrs(self, n: int, count: int) -> None:
        """Step over ``count`` VBR-``n`` values whose values nobody looks at (an instruction's
        operands): what :meth:`vbrs` reads, to the bit. For VBR-6, ten chunks at a time: a
        value ends at a chunk whose high bit is clear, so a window's clear high bits count the
        values that end in it. A window with none (a value of over ten chunks) is read value by
        value, with :meth:`vbr`'s checks."""
        if n != 6:
            self.vbrs(n, count)
            return
        words, p, end = self.words, self.pos, self.end
        while count:
            off = p & 63
            window = words[p >> 6] >> off
            if off > 4:
                window |= words[(p >> 6) + 1] << (64 - off)
            ends = ~window & _VBR6_ENDS
            if not ends:
                self.pos = p
                self.vbr(6)
                p = self.pos
                count -= 1
                continue
            found = ends.bit_count()
            if found > count:  # the count-th end in this window
                for _ in range(count - 1):
                    ends &= ends - 1
                ends &= -ends
                found = count
            p += (ends.bit_length() // 6) * 6  # to just past the last end counted
            count -= found
            if p > end:
                raise NotPlain("truncated bitcode")
        self.pos = p

    def fixeds(self, n: int, count: int) -> list[int]:
        p = self.pos
        if p + n * count > self.end:
            raise NotPlain("truncated bitcode")
        words, mask, out = self.words, (1 << n) - 1, []
        for _ in range(count):
            off = p & 63
            v = words[p >> 6] >> off
            if off + n > 64:
                v |= words[(p >> 6) + 1] << (64 - off)
            out.append(v & mask)
            p += n
        self.pos = p
        return out

    def align32(self) -> None:
        self.pos = (self.pos + 31) & ~31
        if self.pos > self.end:
            raise NotPlain("truncated bitcode")


def check(data: bytes) -> None:
    """Raise :class:`NotPlain` unless ``data`` is plain bitcode (see the module's docstring)."""
    start, end = 0, len(data) * 8
    if len(data) >= 20 and int.from_bytes(data[:4], "little") == _WRAPPER_MAGIC:
        offset, size = int.from_bytes(data[8:12], "little"), int.from_bytes(data[12:16], "little")
        if offset + size > len(data) or offset % 4:
            raise NotPlain("a bitcode wrapper that points outside the file")
        start, end = offset * 8, (offset + size) * 8
    if data[start // 8:start // 8 + 4] != _MAGIC:
        raise NotPlain("not LLVM bitcode")
    bits = _Bits(data, start + 32, end)
    st = _State(base=start + 32)
    while bits.pos < bits.end:
        if bits.end - bits.pos < 32 and not any(data[bits.pos // 8:bits.end // 8]):
            break  # padding to a word (LLVM stops at the end too)
        at = bits.pos
        if bits.fixed(2) != 1:
            raise NotPlain("a top-level entry that is not a block")
        before = bits.pos
        block_id = bits.vbr(8)
        one_chunk = bits.pos - before == 8
        if block_id == _MODULE:
            st.modules += 1
            if st.modules > 1:
                raise NotPlain("more than one module")
        elif block_id not in (_IDENTIFICATION, _STRTAB, _SYMTAB):
            raise NotPlain(f"a top-level block {block_id}")
        if block_id == _IDENTIFICATION:
            st.base = at  # offsets in the symbol table count from here (else from the module)
        _enter(bits, st, block_id, at, one_chunk, 0, None)
    if st.modules != 1:
        raise NotPlain("no module")
    # Offsets count words from one word before the identification (or module) block.
    for w in st.fn_entries:
        if st.base + (w - 1) * 32 not in st.function_starts:
            raise NotPlain("a function offset in the symbol table that is not a function block")
    if st.vst_offset is not None and st.base + (st.vst_offset - 1) * 32 not in st.vst_starts:
        raise NotPlain("a symbol table offset that is not the symbol table")


def plain(data: bytes) -> str | None:
    """None if ``data`` may be compiled as it is, else why not (a short phrase)."""
    try:
        check(data)
    except NotPlain as e:
        return str(e)
    except (IndexError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        return f"unreadable bitcode ({type(e).__name__})"
    return None


def _enter(bits: _Bits, st: _State, block_id: int, at: int, one_chunk: bool, depth: int, parent: int | None) -> None:
    """Read an ENTER_SUBBLOCK's header (the abbrev id and block id are read) and the block."""
    width = bits.vbr(4)
    bits.align32()
    words = bits.fixed(32)
    end = bits.pos + words * 32
    if end > bits.end:
        raise NotPlain("a block longer than the file")
    if depth >= _MAX_DEPTH:
        raise NotPlain("blocks nested too deep")
    if width < 1 or width > 32:
        raise NotPlain(f"an abbreviation width of {width}")
    if block_id == _BLOCKINFO:
        # LLVM's reader applies the block info of the module block, and a second one *replaces*
        # the first (elsewhere it is skipped): a reader that added them up would read the blocks
        # after it otherwise. One, in the module, as LLVM writes it.
        if parent != _MODULE or st.blockinfos:
            raise NotPlain("block info other than one in the module")
        st.blockinfos += 1
    if block_id == _FUNCTION and one_chunk:
        # LLVM jumps to a body at "the block's start + abbrev width + 8": the id in one chunk.
        st.function_starts.add(at)
    elif block_id == _VALUE_SYMTAB and depth == 1:
        st.vst_starts.append(at)
    _block(bits, st, block_id, width, end, depth)
    if bits.pos != end:
        raise NotPlain("a block whose end is not where its length says")


def _block(bits: _Bits, st: _State, block_id: int, width: int, end: int, depth: int) -> None:
    abbrevs = list(st.blockinfo.get(block_id, ()))
    info_target: int | None = None
    wanted = _OPS_WANTED.get(block_id)
    while True:
        if bits.pos >= end:
            raise NotPlain("a block without its end")
        at = bits.pos
        aid, code, ops = bits.entry(width, end, wanted)
        if aid == 0:  # END_BLOCK
            bits.align32()
            return
        if aid == 1:  # ENTER_SUBBLOCK
            before = bits.pos
            sub = bits.vbr(8)
            _enter(bits, st, sub, at, bits.pos - before == 8, depth + 1, block_id)
            continue
        if aid == 2:  # DEFINE_ABBREV
            abbrev = _define(bits)
            if block_id == _BLOCKINFO:
                if info_target is None:
                    raise NotPlain("an abbreviation in the block info before SETBID")
                st.blockinfo.setdefault(info_target, []).append(abbrev)
            else:
                abbrevs.append(abbrev)
            continue
        if aid != 3:  # an abbreviated record (an UNABBREV_RECORD was read by entry())
            if aid - 4 >= len(abbrevs):
                raise NotPlain(f"an undefined abbreviation {aid}")
            abbrev = abbrevs[aid - 4]
            first = abbrev.ops[0]
            if wanted is not None and first[0] == "lit" and first[1] not in wanted:
                _step_over(bits, abbrev, end)  # its code is a literal nobody looks past
                code, ops = first[1], []
            else:
                code, ops, _ = _read(bits, abbrev, end, wanted)
        if block_id == _BLOCKINFO:
            if code == 1:  # SETBID
                if not ops:
                    raise NotPlain("an empty SETBID")
                info_target = ops[0]
            continue
        _record(st, block_id, depth, code, ops)


def _define(bits: _Bits) -> _Abbrev:
    n = bits.vbr(5)
    ops: list[tuple[str, int]] = []
    i = 0
    while i < n:
        if bits.fixed(1):
            ops.append(("lit", bits.vbr(8)))
        else:
            enc = bits.fixed(3)
            if enc in (1, 2):
                w = bits.vbr(5)
                if (enc == 1 and w > 64) or (enc == 2 and w > 32):
                    raise NotPlain("an abbreviation operand too wide")
                ops.append(("lit", 0) if w == 0 else ("fixed" if enc == 1 else "vbr", w))
            elif enc == 3:
                ops.append(("array", 0))
            elif enc == 4:
                ops.append(("char6", 0))
            elif enc == 5:
                ops.append(("blob", 0))
            else:
                raise NotPlain(f"an abbreviation encoding {enc}")
        i += 1
    for k, (kind, _) in enumerate(ops):
        if kind == "array" and (k != len(ops) - 2 or ops[k + 1][0] in ("array", "blob")):
            raise NotPlain("an array that is not next to last")
        if kind == "blob" and k != len(ops) - 1:
            raise NotPlain("a blob that is not last")
    if not ops:
        raise NotPlain("an empty abbreviation")
    return _Abbrev(ops)


_CHAR6 = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._"


def _scalar(bits: _Bits, kind: str, w: int) -> int:
    if kind == "lit":
        return w
    if kind == "fixed":
        return bits.fixed(w)
    if kind == "vbr":
        return bits.vbr(w)
    if kind == "char6":
        return _CHAR6[bits.fixed(6)]
    raise NotPlain("a malformed abbreviation")


def _read(bits: _Bits, abbrev: _Abbrev, end: int,
          wanted: frozenset[int] | None = None) -> tuple[int, list, bytes | None]:
    """A record by its abbreviation: (code, operands, blob). With ``wanted``, the operands of a
    record whose code is not in it are stepped over (:func:`_step_over`; an empty list)."""
    values: list = []
    blob = None
    ops = abbrev.ops
    k = 0
    while k < len(ops):
        kind, w = ops[k]
        if kind == "array":
            n = bits.vbr(6)
            if n > (end - bits.pos):
                raise NotPlain("an array longer than its block")
            ekind, ew = ops[k + 1]
            if ekind == "fixed":
                values.extend(bits.fixeds(ew, n))
            elif ekind == "vbr":
                values.extend(bits.vbrs(ew, n))
            elif ekind == "char6":
                values.extend(_CHAR6[c] for c in bits.fixeds(6, n))
            else:
                raise NotPlain("an array of literals")  # LLVM's reader refuses them too
            k += 2
        elif kind == "blob":
            n = bits.vbr(6)
            bits.align32()
            if bits.pos + n * 8 > end:
                raise NotPlain("a blob longer than its block")
            blob = bits.data[bits.pos >> 3:(bits.pos >> 3) + n]
            bits.pos += n * 8
            bits.align32()
            k += 1
        else:
            values.append(_scalar(bits, kind, w))
            k += 1
        if wanted is not None and values and values[0] not in wanted:
            _step_over(bits, abbrev, end, k)
            return values[0], [], blob
    if not values:
        raise NotPlain("a record without a code")
    return values[0], values[1:], blob


def _step_over(bits: _Bits, abbrev: _Abbrev, end: int, start: int = 1) -> None:
    """Step over a record's operands from its abbreviation's op ``start`` on (1: after a literal
    code), as :func:`_read` reads them, without keeping any: fixed fields by their width."""
    ops = abbrev.ops
    k = start
    while k < len(ops):
        kind, w = ops[k]
        if kind == "fixed":
            bits.pos += w
        elif kind == "vbr":
            bits.vbr(w)
        elif kind == "char6":
            bits.pos += 6
        elif kind == "array":
            n = bits.vbr(6)
            if n > (end - bits.pos):
                raise NotPlain("an array longer than its block")
            ekind, ew = ops[k + 1]
            if ekind == "vbr":
                bits.skip_vbrs(ew, n)
            elif ekind in ("fixed", "char6"):
                bits.pos += n * (ew if ekind == "fixed" else 6)
            else:
                raise NotPlain("an array of literals")
            k += 1
        elif kind == "blob":
            n = bits.vbr(6)
            bits.align32()
            if bits.pos + n * 8 > end:
                raise NotPlain("a blob longer than its block")
            bits.pos += n * 8
            bits.align32()
        elif kind != "lit":
            raise NotPlain("a malformed abbreviation")
        if bits.pos > bits.end:
            raise NotPlain("truncated bitcode")
        k += 1


def _record(st: _State, block_id: int, depth: int, code: int, ops: list) -> None:
    """Look at one record."""
    if block_id == _MODULE:
        if code == _MODULE_ASM:
            raise NotPlain("module asm")
        if code == _MODULE_VSTOFFSET:
            if not ops or st.vst_offset is not None:
                raise NotPlain("a malformed symbol table offset")
            st.vst_offset = ops[0]
    elif block_id == _CONSTANTS:
        if code not in _CONSTANTS_OK:
            raise NotPlain("inline asm" if code in (18, 23, 28, 30) else f"a constant record {code}")
    elif block_id == _VALUE_SYMTAB:
        if code == _VST_FNENTRY:
            if depth != 1 or len(ops) < 2:
                raise NotPlain("a function entry outside the module's symbol table")
            st.fn_entries.append(ops[1])
    elif block_id == _METADATA:
        if code == _METADATA_NAME:
            name = bytes(v & 0xFF for v in ops) if all(0 <= v < 256 for v in ops) else b""
            if name in _LINKER_METADATA or not name:
                raise NotPlain(f"named metadata {name.decode('latin-1') or '?'}")
    elif block_id == _PARAMATTR_GROUP and code == _GRP_ENTRY:
        _attributes(ops)


def _attributes(ops: list) -> None:
    """A PARAMATTR_GRP_CODE_ENTRY: [id, index, kind, ...]; a string key (kinds 3, 4) of a
    baseline target attribute is not plain."""
    i = 2
    n = len(ops)
    while i < n:
        kind = ops[i]
        i += 1
        if kind == 0:      # enum attribute
            i += 1
        elif kind == 1:    # integer attribute
            i += 2
        elif kind in (3, 4):
            key, i = _cstring(ops, i)
            if key in _TARGET_KEYS:
                raise NotPlain(f"a {key.decode()} attribute")
            if kind == 4:
                _, i = _cstring(ops, i)
        elif kind == 5:    # type attribute without a type
            i += 1
        elif kind == 6:    # type attribute
            i += 2
        else:
            raise NotPlain(f"an attribute kind {kind}")
    if i != n:
        raise NotPlain("a malformed attribute group")


def _cstring(ops: list, i: int) -> tuple[bytes, int]:
    out = bytearray()
    while True:
        if i >= len(ops):
            raise NotPlain("an unterminated attribute string")
        v = ops[i]
        i += 1
        if v == 0:
            return bytes(out), i
        if not 0 < v < 256:
            raise NotPlain("an attribute string that is not bytes")
        out.append(v)
