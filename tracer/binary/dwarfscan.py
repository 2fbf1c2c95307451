"""Targeted DWARF reads: decode one struct DIE without parsing the whole file.

pyelftools' DWARFInfo decompresses every debug section and parses DIEs one
Python object at a time; for the one fact we need (a member offset in
``runtime.g``) that is wasted work on 100 MB binaries. Here only .debug_info and
.debug_abbrev are loaded, the struct is located by its inline name (the Go
linker writes names as DW_FORM_string), and only that DIE's abbrev table and
direct children are decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .varint import uvarint

DW_TAG_STRUCTURE_TYPE = 0x13
DW_TAG_MEMBER = 0x0D
DW_AT_NAME = 0x03
DW_AT_DATA_MEMBER_LOCATION = 0x38
DW_FORM_STRING = 0x08
DW_FORM_INDIRECT = 0x16
DW_FORM_IMPLICIT_CONST = 0x21
DW_OP_PLUS_UCONST = 0x23

# Fixed-size forms: form -> byte size. "A" = address size, "O" = offset size.
_FIXED: dict[int, int | str] = {
    0x01: "A", 0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: "O", 0x10: "O",
    0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8, 0x17: "O", 0x19: 0, 0x1C: 4, 0x1D: "O",
    0x1E: 16, 0x1F: "O", 0x20: 8, 0x21: 0, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4,
    0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4,
}
_ULEB_FORMS = {0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23}  # udata, ref_udata, strx, addrx, *listx
_SLEB_FORMS = {0x0D}
_BLOCK_LEN = {0x03: 2, 0x04: 4, 0x0A: 1}  # block2, block4, block1: fixed-size length
_ULEB_BLOCKS = {0x09, 0x18}  # block, exprloc: uleb length


class DwarfFormatError(ValueError):
    pass


def _sleb(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                value -= 1 << shift
            return value, pos


@dataclass(frozen=True)
class _Abbrev:
    tag: int
    has_children: bool
    attrs: tuple[tuple[int, int, int], ...]  # (attribute, form, implicit_const)


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int  # exclusive
    version: int
    offset_size: int
    addr_size: int
    abbrev_offset: int


def _units(info: bytes) -> list[_Unit]:
    units = []
    pos = 0
    while pos + 11 <= len(info):
        length = struct.unpack_from("<I", info, pos)[0]
        hdr = pos + 4
        osize = 4
        if length == 0xFFFFFFFF:
            length = struct.unpack_from("<Q", info, hdr)[0]
            hdr += 8
            osize = 8
        end = hdr + length
        version = struct.unpack_from("<H", info, hdr)[0]
        if version >= 5:
            addr_size = info[hdr + 3]
            abbrev = int.from_bytes(info[hdr + 4:hdr + 4 + osize], "little")
        else:
            abbrev = int.from_bytes(info[hdr + 2:hdr + 2 + osize], "little")
            addr_size = info[hdr + 2 + osize]
        units.append(_Unit(pos, end, version, osize, addr_size, abbrev))
        if end <= pos:
            break
        pos = end
    return units


def _abbrev_table(abbrev: bytes, offset: int) -> dict[int, _Abbrev]:
    table: dict[int, _Abbrev] = {}
    pos = offset
    while True:
        code, pos = uvarint(abbrev, pos)
        if code == 0:
            return table
        tag, pos = uvarint(abbrev, pos)
        children = abbrev[pos] != 0
        pos += 1
        attrs = []
        while True:
            attr, pos = uvarint(abbrev, pos)
            form, pos = uvarint(abbrev, pos)
            const = 0
            if form == DW_FORM_IMPLICIT_CONST:
                const, pos = _sleb(abbrev, pos)
            if attr == 0 and form == 0:
                break
            attrs.append((attr, form, const))
        table[code] = _Abbrev(tag, children, tuple(attrs))


class _DieReader:
    def __init__(self, info: bytes, unit: _Unit, abbrevs: dict[int, _Abbrev]) -> None:
        self.info, self.unit, self.abbrevs = info, unit, abbrevs

    def value(self, form: int, pos: int, const: int) -> tuple[object, int]:
        """(decoded value or raw bytes, next position) of one attribute."""
        buf = self.info
        if form == DW_FORM_INDIRECT:
            form, pos = uvarint(buf, pos)
        if form == DW_FORM_STRING:
            end = buf.index(b"\0", pos)
            return buf[pos:end], end + 1
        if form == DW_FORM_IMPLICIT_CONST:
            return const, pos
        if form in _ULEB_FORMS:
            return uvarint(buf, pos)
        if form in _SLEB_FORMS:
            return _sleb(buf, pos)
        if form in _BLOCK_LEN:
            n = _BLOCK_LEN[form]
            length = int.from_bytes(buf[pos:pos + n], "little")
            return buf[pos + n:pos + n + length], pos + n + length
        if form in _ULEB_BLOCKS:
            length, pos = uvarint(buf, pos)
            return buf[pos:pos + length], pos + length
        size = _FIXED.get(form)
        if size is None:
            raise DwarfFormatError(f"unsupported DWARF form {form:#x}")
        if size == "A":
            size = self.unit.addr_size
        elif size == "O":
            size = self.unit.offset_size
        if form == 0x10 and self.unit.version == 2:  # DWARF 2 ref_addr is address-sized
            size = self.unit.addr_size
        assert isinstance(size, int)
        return int.from_bytes(buf[pos:pos + size], "little"), pos + size

    def die(self, pos: int) -> tuple[_Abbrev | None, dict[int, object], int]:
        """(abbrev or None for a null entry, {attr: value}, position after the DIE)."""
        code, pos = uvarint(self.info, pos)
        if code == 0:
            return None, {}, pos
        ab = self.abbrevs.get(code)
        if ab is None:
            raise DwarfFormatError(f"unknown abbrev code {code}")
        attrs: dict[int, object] = {}
        for attr, form, const in ab.attrs:
            attrs[attr], pos = self.value(form, pos, const)
        return ab, attrs, pos

    def children(self, pos: int):
        """Yield (abbrev, attrs) of the direct children starting at ``pos``."""
        depth = 0
        while pos < self.unit.end:
            ab, attrs, pos = self.die(pos)
            if ab is None:
                if depth == 0:
                    return
                depth -= 1
                continue
            if depth == 0:
                yield ab, attrs
            if ab.has_children:
                depth += 1


def _member_offset(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, bytes) and value and value[0] == DW_OP_PLUS_UCONST:
        return uvarint(value, 1)[0]
    return None


def struct_member_offset(info: bytes, abbrev: bytes, struct_name: str,
                         member: str) -> int | None:
    """Byte offset of ``member`` in the struct DIE named ``struct_name``, or None."""
    name = struct_name.encode()
    needle = name + b"\0"
    units: list[_Unit] | None = None
    tables: dict[int, dict[int, _Abbrev]] = {}
    hit = info.find(needle)
    while hit != -1:
        if units is None:
            units = _units(info)
        unit = next((u for u in units if u.start < hit < u.end), None)
        if unit is not None:
            if unit.abbrev_offset not in tables:
                tables[unit.abbrev_offset] = _abbrev_table(abbrev, unit.abbrev_offset)
            reader = _DieReader(info, unit, tables[unit.abbrev_offset])
            for back in (1, 2, 3):  # the abbrev code is a short ULEB right before the name
                start = hit - back
                try:
                    code, after = uvarint(info, start)
                    ab = reader.abbrevs.get(code)
                    if after != hit or ab is None or ab.tag != DW_TAG_STRUCTURE_TYPE \
                            or not ab.attrs or ab.attrs[0][:2] != (DW_AT_NAME, DW_FORM_STRING):
                        continue
                    ab, attrs, pos = reader.die(start)
                    if ab is None or attrs.get(DW_AT_NAME) != name or not ab.has_children:
                        continue
                    for child, cattrs in reader.children(pos):
                        if child.tag == DW_TAG_MEMBER and cattrs.get(DW_AT_NAME) == member.encode():
                            return _member_offset(cattrs.get(DW_AT_DATA_MEMBER_LOCATION))
                    return None
                except (IndexError, ValueError, struct.error):
                    continue
        hit = info.find(needle, hit + 1)
    return None
