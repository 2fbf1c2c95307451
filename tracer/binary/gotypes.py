"""Decode Go runtime type descriptors (internal/abi.Type) from raw memory.

Everything goes through a ``read(addr, n) -> bytes`` callable so the same code
runs on a live process (ptrace/gdb memory reads) and, in tests, on the ELF file.
Layout (amd64, Go 1.18+; unchanged through 1.27):

    abi.Type   size 0 | ptrdata 8 | hash 16 | tflag 20 | align 21 | fieldAlign 22 |
               kind 23 | equal 24 | gcdata 32 | str nameOff(i32) 40 | ptrToThis 44
    PtrType    Type | elem *Type 48
    StructType Type | pkgPath name 48 | fields []StructField 56 (ptr, len, cap)
    StructField name 0 | typ *Type 8 | offset uintptr 16          (24 bytes)
    name       flags u8 | uvarint length | bytes

Older toolchains packed flag bits (kindDirectIface, kindGCProg) into the kind
byte; newer ones moved them to tflag. Masking with 0x1f is right for both.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .varint import uvarint

Read = Callable[[int, int], bytes]

TYPE_SIZE = 48
OFF_TFLAG = 20
OFF_KIND = 23
OFF_STR = 40
OFF_PTR_ELEM = 48
OFF_STRUCT_FIELDS = 56
STRUCT_FIELD_SIZE = 24

TFLAG_EXTRA_STAR = 1 << 1
KIND_MASK = 0x1F

KIND_POINTER = 22
KIND_STRING = 24
KIND_STRUCT = 25

_MAX_NAME = 1 << 16
_MAX_FIELDS = 1 << 16


class TypeDecodeError(ValueError):
    """The bytes do not look like a Go type descriptor."""


def _u64(read: Read, addr: int) -> int:
    return struct.unpack("<Q", read(addr, 8))[0]


def read_name(read: Read, addr: int) -> str:
    """Decode an abi.Name: flags byte, uvarint length, bytes."""
    head = read(addr, 1 + 10)  # flags + the longest uvarint we accept
    try:
        length, pos = uvarint(head, 1)
    except ValueError:
        raise TypeDecodeError(f"bad name length at {addr:#x}") from None
    if length > _MAX_NAME:
        raise TypeDecodeError(f"implausible name length {length} at {addr:#x}")
    return read(addr + pos, length).decode("utf-8", "replace") if length else ""


def type_kind(read: Read, type_addr: int) -> int:
    """abi.Kind of the type (e.g. 22 pointer, 24 string, 25 struct)."""
    return read(type_addr + OFF_KIND, 1)[0] & KIND_MASK


def type_name(read: Read, types_base: int, type_addr: int) -> str:
    """The type's string form, e.g. "*errors.errorString".

    ``str`` is an offset from moduledata.types; with tflagExtraStar the stored
    string carries a leading '*' that belongs to the pointer type sharing it.
    """
    tflag = read(type_addr + OFF_TFLAG, 1)[0]
    name_off = struct.unpack("<i", read(type_addr + OFF_STR, 4))[0]
    name = read_name(read, types_base + name_off)
    if tflag & TFLAG_EXTRA_STAR and name.startswith("*"):
        name = name[1:]
    return name


def _struct_fields(read: Read, struct_type: int) -> list[tuple[int, int]]:
    """[(field type addr, field offset)] of an abi.StructType."""
    ptr, length = struct.unpack("<QQ", read(struct_type + OFF_STRUCT_FIELDS, 16))
    if length > _MAX_FIELDS:
        raise TypeDecodeError(f"implausible field count {length} at {struct_type:#x}")
    if length == 0:
        return []
    raw = read(ptr, length * STRUCT_FIELD_SIZE)
    return [(typ, off) for _name, typ, off in struct.iter_unpack("<QQQ", raw)]


def first_string_field_offset(read: Read, type_addr: int) -> int | None:
    """Where a printable string sits in a value of this type, if at offset 0.

    For a string: 0 (the value itself). For a struct, or a pointer to a struct,
    whose field at offset 0 is a string: 0, the offset of that string header in
    the (pointed-to) object — the shape of most error types (errors.errorString,
    fmt.wrapError). Otherwise None.
    """
    kind = type_kind(read, type_addr)
    if kind == KIND_STRING:
        return 0
    if kind == KIND_POINTER:
        type_addr = _u64(read, type_addr + OFF_PTR_ELEM)
        if type_addr == 0:
            return None
        kind = type_kind(read, type_addr)
    if kind != KIND_STRUCT:
        return None
    for field_type, offset in _struct_fields(read, type_addr):
        if offset != 0:
            break  # fields are in offset order; only those at 0 qualify
        if field_type and type_kind(read, field_type) == KIND_STRING:
            return 0
    return None
