"""Go values in a live process's memory: strings, interface values, errors.

Everything goes through a ``read(addr, n) -> bytes`` callable (ptrace, /proc/PID/mem,
Delve's ExamineMemory), so gdb's hit handler, the Delve client and the uprobe reader decode
alike. Standard library only: gdb's hit handler imports this module inside gdb's own Python.

An error's message is given only where the type's `Error()` is known to return one field
of it, unchanged (`KNOWN_ERRORS`); any other error is its type and, for a struct, its
scalar fields by name, with the message null: a struct's first string is not its message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import gotypes

Read = Callable[[int, int], bytes]

MAX_NAME = 256
MAX_MESSAGE = 1024
MAX_FIELDS = 16  # fields of an unknown error struct kept in the trace

# Error types whose Error() returns one string field as it is: (package path, type name) of
# the struct the error pointer points to -> the field path of the message, and extra fields
# (name -> field path) worth keeping. Read from each type's source:
#   errors.errorString.Error() = e.s;  fmt.wrapError(s).Error() = e.msg;
#   k8s.io/apimachinery/pkg/api/errors.StatusError.Error() = e.ErrStatus.Message.
# Offsets are never assumed: each path is looked up by field name in the runtime type
# descriptor of the error's own binary.
KNOWN_ERRORS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("errors", "errorString"): {"message": ("s",)},
    ("fmt", "wrapError"): {"message": ("msg",)},
    ("fmt", "wrapErrors"): {"message": ("msg",)},
    ("k8s.io/apimachinery/pkg/api/errors", "StatusError"): {
        "message": ("ErrStatus", "Message"),
        "reason": ("ErrStatus", "Reason"),
        "code": ("ErrStatus", "Code"),
    },
}
# Error types whose Error() returns a constant: (package path, type name) -> the text.
CONSTANT_ERRORS: dict[tuple[str, str], str] = {
    ("context", "deadlineExceededError"): "context deadline exceeded",
}


def unvendored(path: str) -> str:
    """A package's import path without a GOPATH build's vendor prefix: Kubernetes' own
    binaries (kube-controller-manager) name apimachinery
    `k8s.io/kubernetes/vendor/k8s.io/apimachinery/...`."""
    return path.rpartition("/vendor/")[2]


class ErrorLayout:
    """How to read one error type's value: fixed per type for the life of the process."""

    def __init__(self, name: str, pointer: bool) -> None:
        self.name = name
        self.pointer = pointer  # the interface's data word points at the struct
        self.message: tuple[int, int] | None = None  # (offset, kind) of the message
        self.constant: str | None = None
        self.extra: dict[str, tuple[int, int]] = {}  # name -> (offset, kind)
        self.fields: dict[str, tuple[int, int]] = {}  # unknown types: scalar fields

    @property
    def message_offset(self) -> int | None:
        return None if self.message is None else self.message[0]


def _direct(read: Read, type_addr: int) -> bool:
    """A value kept in the interface's data word itself (one pointer), not pointed at."""
    size, ptrdata = struct.unpack("<QQ", read(type_addr, 16))
    return size == 8 and ptrdata == 8


class GoMemory:
    """Decoding over a read(addr, n) callable, with the type caches a run keeps."""

    def __init__(self, read: Read, types_base: int | None, goid_offset: int | None) -> None:
        self.read = read
        self.types_base = types_base
        self.goid_offset = goid_offset
        self.capture_args = True
        self._errors: dict[int, ErrorLayout] = {}
        self._itabs: dict[int, int] = {}

    def u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def string(self, ptr: int, length: int, limit: int = MAX_NAME) -> str | None:
        if length < 0 or length >= 1 << 62 or (ptr == 0 and length != 0):
            return None
        if length == 0:
            return ""
        return self.read(ptr, min(length, limit)).decode("utf-8", "replace")

    def goid(self, g: int) -> int | None:
        if not g or self.goid_offset is None:
            return None
        return self.u64(g + self.goid_offset)

    def itab_type(self, itab: int) -> int:
        """An itab's concrete type: read once (an itab never changes), so hits read after
        the operator has exited still name the types seen before."""
        cached = self._itabs.get(itab)
        if cached is None:
            cached = self._itabs[itab] = self.u64(itab + 8)
        return cached

    # -- error types ----------------------------------------------------------------------
    def error_layout(self, type_addr: int) -> ErrorLayout:
        cached = self._errors.get(type_addr)
        if cached is None:
            cached = self._errors[type_addr] = self._layout(type_addr)
        return cached

    def _layout(self, type_addr: int) -> ErrorLayout:
        read, base = self.read, self.types_base
        if base is None:
            return ErrorLayout(f"0x{type_addr:x}", False)
        name = gotypes.type_name(read, base, type_addr)
        kind = gotypes.type_kind(read, type_addr)
        pointer = kind == gotypes.KIND_POINTER
        target = gotypes.pointer_elem(read, type_addr) if pointer else type_addr
        layout = ErrorLayout(name, pointer)
        if kind == gotypes.KIND_STRING and name == "string":
            layout.message = (0, kind)  # panic("...") prints the string itself
            return layout
        if not target:
            return layout
        key = (unvendored(gotypes.pkg_path(read, base, target) or ""),
               name.lstrip("*").rpartition(".")[2])
        layout.constant = CONSTANT_ERRORS.get(key)
        known = KNOWN_ERRORS.get(key)
        if known is not None and gotypes.type_kind(read, target) == gotypes.KIND_STRUCT:
            for field, path in known.items():
                found = self._field(target, path)
                if field == "message":
                    layout.message = found if found and found[1] == gotypes.KIND_STRING else None
                elif found is not None:
                    layout.extra[field] = found
        elif gotypes.type_kind(read, target) == gotypes.KIND_STRUCT and (
                pointer or not _direct(read, target)):
            for fname, ftype, off in gotypes.struct_fields(read, target)[:MAX_FIELDS]:
                fkind = gotypes.type_kind(read, ftype)
                if fkind == gotypes.KIND_STRING or fkind in gotypes.INTEGER_KINDS \
                        or fkind == gotypes.KIND_BOOL:
                    layout.fields[fname] = (off, fkind)
        return layout

    def _field(self, struct_type: int, path: tuple[str, ...]) -> tuple[int, int] | None:
        """(offset, kind) of a field path in a struct type, by name; None if absent."""
        offset = 0
        current = struct_type
        for step, name in enumerate(path):
            if gotypes.type_kind(self.read, current) != gotypes.KIND_STRUCT:
                return None
            match = next(((t, o) for n, t, o in gotypes.struct_fields(self.read, current)
                          if n == name), None)
            if match is None:
                return None
            current, off = match
            offset += off
            if step == len(path) - 1:
                return offset, gotypes.type_kind(self.read, current)
        return None

    def scalar(self, addr: int, kind: int):
        if kind == gotypes.KIND_STRING:
            return self.string(self.u64(addr), self.u64(addr + 8), MAX_MESSAGE)
        if kind == gotypes.KIND_BOOL:
            return self.read(addr, 1)[0] != 0
        size, signed = gotypes.INTEGER_KINDS[kind]
        return int.from_bytes(self.read(addr, size), "little", signed=signed)

    def error_value(self, type_addr: int, data: int) -> list | None:
        """[type name, message or None, {extra fields} or None] for an error interface's
        (concrete type, data word). The data word points at the value (pointer types: it is
        the pointer), so a field at offset o of the struct sits at data + o."""
        if type_addr == 0:
            return None
        layout = self.error_layout(type_addr)
        if not self.capture_args or not data:
            return [layout.name, layout.constant, None]
        message = layout.constant
        if layout.message is not None:
            message = self.scalar(data + layout.message[0], layout.message[1])
        extra = None
        fields = layout.extra or layout.fields
        if fields:
            extra = {name: self.scalar(data + off, kind) for name, (off, kind) in fields.items()}
            if layout.fields:
                extra = {"fields": extra}
        return [layout.name, message, extra]

    def iface_error(self, itab: int, data: int) -> list | None:
        """An `error` (non-empty interface): itab, data word."""
        return self.error_value(self.itab_type(itab), data) if itab else None
