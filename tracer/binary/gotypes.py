"""Decode Go runtime type descriptors (internal/abi.Type) from raw memory.

Everything goes through a ``read(addr, n) -> bytes`` callable so the same code
runs on a live process (ptrace/gdb memory reads) and, in tests, on the ELF file.
Layout (amd64, Go 1.18+; unchanged through 1.27):

    abi.Type   size 0 | ptrdata 8 | hash 16 | tflag 20 | align 21 | fieldAlign 22 |
               kind 23 | equal 24 | gcdata 32 | str nameOff(i32) 40 | ptrToThis 44
    PtrType    Type | elem *Type 48
    StructType Type | pkgPath name 48 | fields []StructField 56 (ptr, len, cap)
    StructField name 0 | typ *Type 8 | offset uintptr 16          (24 bytes)
    FuncType   Type | inCount u16 48 | outCount u16 50 (top bit: variadic); then, after
               the uncommon part if any, inCount+outCount *Type
    InterfaceType Type | pkgPath name 48 | methods []Imethod 56    Imethod name i32 | typ i32
    UncommonType (after the kind's struct, when tflag has 1) pkgPath nameOff i32 | ...
    itab       inter 0 | type 8 | hash 16 | fun [n]uintptr 24
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

TFLAG_UNCOMMON = 1 << 0
TFLAG_EXTRA_STAR = 1 << 1
KIND_MASK = 0x1F

KIND_BOOL = 1
KIND_INT = 2
KIND_INT8 = 3
KIND_INT16 = 4
KIND_INT32 = 5
KIND_INT64 = 6
KIND_UINT = 7
KIND_UINT8 = 8
KIND_UINT16 = 9
KIND_UINT32 = 10
KIND_UINT64 = 11
KIND_FUNC = 19
KIND_INTERFACE = 20
KIND_POINTER = 22
KIND_STRING = 24
KIND_STRUCT = 25

# Integer kinds: (size, signed), for reading a field's value.
INTEGER_KINDS = {KIND_INT: (8, True), KIND_INT8: (1, True), KIND_INT16: (2, True),
                 KIND_INT32: (4, True), KIND_INT64: (8, True), KIND_UINT: (8, False),
                 KIND_UINT8: (1, False), KIND_UINT16: (2, False), KIND_UINT32: (4, False),
                 KIND_UINT64: (8, False)}

# Where the uncommon part starts: the size of each kind's descriptor struct.
_KIND_STRUCT_SIZE = {KIND_STRUCT: 80, KIND_POINTER: 56, KIND_FUNC: 56, KIND_INTERFACE: 80}
UNCOMMON_SIZE = 16
OFF_FUNC_IN = 48
OFF_FUNC_OUT = 50
OFF_IFACE_METHODS = 56
ITAB_FUN = 24

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


def type_size(read: Read, type_addr: int) -> int:
    return _u64(read, type_addr)


def pointer_elem(read: Read, type_addr: int) -> int:
    return _u64(read, type_addr + OFF_PTR_ELEM)


def struct_fields(read: Read, struct_type: int) -> list[tuple[str, int, int]]:
    """[(field name, field type addr, offset)] of an abi.StructType, in offset order."""
    ptr, length = struct.unpack("<QQ", read(struct_type + OFF_STRUCT_FIELDS, 16))
    if length > _MAX_FIELDS:
        raise TypeDecodeError(f"implausible field count {length} at {struct_type:#x}")
    if length == 0:
        return []
    raw = read(ptr, length * STRUCT_FIELD_SIZE)
    return [(read_name(read, name), typ, off) for name, typ, off in struct.iter_unpack("<QQQ", raw)]


def pkg_path(read: Read, types_base: int, type_addr: int) -> str | None:
    """The package path of a named type (its uncommon part), or None."""
    tflag = read(type_addr + OFF_TFLAG, 1)[0]
    extra = _KIND_STRUCT_SIZE.get(type_kind(read, type_addr), TYPE_SIZE)
    if not tflag & TFLAG_UNCOMMON:
        return None
    off = struct.unpack("<i", read(type_addr + extra, 4))[0]
    return read_name(read, types_base + off) if off else None


def func_signature(read: Read, func_type: int) -> tuple[list[int], list[int]]:
    """([parameter type addrs], [result type addrs]) of an abi.FuncType."""
    if type_kind(read, func_type) != KIND_FUNC:
        raise TypeDecodeError(f"{func_type:#x} is not a func type")
    n_in, n_out = struct.unpack("<HH", read(func_type + OFF_FUNC_IN, 4))
    n_out &= 0x7FFF
    start = func_type + _KIND_STRUCT_SIZE[KIND_FUNC]
    if read(func_type + OFF_TFLAG, 1)[0] & TFLAG_UNCOMMON:
        start += UNCOMMON_SIZE
    words = list(struct.unpack(f"<{n_in + n_out}Q", read(start, 8 * (n_in + n_out))))
    return words[:n_in], words[n_in:]


def interface_methods(read: Read, types_base: int, iface_type: int) -> list[tuple[str, int]]:
    """[(method name, func type addr)] of an abi.InterfaceType, sorted as in its itabs."""
    ptr, length = struct.unpack("<QQ", read(iface_type + OFF_IFACE_METHODS, 16))
    if length > _MAX_FIELDS:
        raise TypeDecodeError(f"implausible method count {length} at {iface_type:#x}")
    raw = read(ptr, 8 * length) if length else b""
    return [(read_name(read, types_base + name), types_base + typ)
            for name, typ in struct.iter_unpack("<ii", raw)]
