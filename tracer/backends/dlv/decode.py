"""Turn what Delve reports at a breakpoint into the values the gdb agent captures.

The value shapes are the gdb agent's (tracer/backends/gdb/agent.py), so spans are the same
whichever backend recorded them:
  cr-request  [namespace, name]
  cr-result   [requeue, requeue_after_ns, [error type, message] | None]
  go-panic    [type, message]

Two ways to read them:
- by name: Delve loads the function's arguments and results from DWARF (`LoadArgs` on the
  breakpoint, no extra round trip). Works on builds with `-gcflags=all=-N -l` that this
  Delve can read; on optimized builds results are "unreadable: empty OP stack".
- from registers (Go's register ABI, as the gdb agent reads them) and memory: one
  ListRegisters round trip per hit, then ExamineMemory reads for strings and type names.

Error type names are the runtime's (`*controllers.RetryableError`), read from the itab and
the type descriptor (tracer/binary/gotypes.py), not Delve's (which spells the import path).
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable

from tracer.binary import gotypes

MAX_NAME = 256
MAX_MESSAGE = 1024
EXAMINE_MAX = 1000  # Delve's ExamineMemory refuses longer reads

# api.Variable flags and reflect kinds as Delve reports them.
FLAG_RETURN = 16  # VariableReturnArgument
FLAG_FAKE_ADDRESS = 32  # VariableFakeAddress: lives in registers, addr is not memory
KIND_INVALID = 0
KIND_BOOL = 1
KIND_INTERFACE = 20
KIND_PTR = 22
KIND_STRING = 24
KIND_STRUCT = 25

# What Delve loads at a hit, by name. Pointers are not followed at entry (the receiver and
# ctx would cost time); strings are loaded whatever FollowPointers says.
ENTRY_LOAD = {"FollowPointers": False, "MaxVariableRecurse": 2, "MaxStringLen": MAX_NAME,
              "MaxArrayValues": 0, "MaxStructFields": 8}
# At a RET the error's concrete value must be followed to reach its message.
EXIT_LOAD = {"FollowPointers": True, "MaxVariableRecurse": 1, "MaxStringLen": MAX_MESSAGE,
             "MaxArrayValues": 0, "MaxStructFields": 8}

Read = Callable[[int, int], bytes]

_PATH = re.compile(r"(?:[\w.~%+-]+/)+")
_CONSTANT = re.compile(r"\((-?\d+)\)$")


class Undecodable(Exception):
    """Delve did not give what this decoder needs (unreadable, optimized away, missing)."""


def shorten_type(name: str) -> str:
    """Delve's type name with import paths cut to the package name, as the runtime spells
    it: `*example.com/op/controllers.E` -> `*controllers.E`. Used only when the type
    descriptor cannot be read."""
    return _PATH.sub("", name)


def parse_registers(regs: list[dict]) -> dict[str, int]:
    """ListRegisters' Regs ([{"Name": "Rax", "Value": "0x..."}]) as {"rax": int}."""
    out = {}
    for reg in regs:
        try:
            out[reg["Name"].lower()] = int(reg["Value"].split()[0], 16)
        except (ValueError, IndexError, KeyError):
            continue
    return out


def examine_reader(call: Callable[..., dict]) -> Read:
    """read(addr, n) over Delve's ExamineMemory, in pieces of at most 1000 bytes."""

    def read(addr: int, size: int) -> bytes:
        out = b""
        while len(out) < size:
            n = min(EXAMINE_MAX, size - len(out))
            mem = base64.b64decode(call("ExamineMemory", Address=addr + len(out),
                                        Length=n)["Mem"] or b"")
            if len(mem) < n:
                raise ValueError(f"short read at 0x{addr + len(out):x}")
            out += mem
        return out

    return read


class Memory:
    """Decoding over a read(addr, n) callable, with the type caches a run keeps."""

    def __init__(self, read: Read, types_base: int | None, goid_offset: int | None) -> None:
        self.read = read
        self.types_base = types_base
        self.goid_offset = goid_offset
        self.capture_args = True
        self._types: dict[int, tuple[str, int | None]] = {}
        self._itabs: dict[int, int] = {}

    def u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def string(self, ptr: int, length: int, limit: int) -> str | None:
        if length < 0 or length >= 1 << 62 or (ptr == 0 and length != 0):
            return None
        if length == 0:
            return ""
        return self.read(ptr, min(length, limit)).decode("utf-8", "replace")

    def goid(self, g: int) -> int | None:
        if not g or self.goid_offset is None:
            return None
        return self.u64(g + self.goid_offset)

    def type_info(self, type_addr: int) -> tuple[str, int | None]:
        """(runtime type name, offset of a message string in the value or None), cached:
        a type descriptor is static for the life of the process."""
        cached = self._types.get(type_addr)
        if cached is None:
            if self.types_base is None:
                name = f"0x{type_addr:x}"
            else:
                name = gotypes.type_name(self.read, self.types_base, type_addr)
            cached = (name, gotypes.first_string_field_offset(self.read, type_addr))
            self._types[type_addr] = cached
        return cached

    def itab_type(self, itab: int) -> int:
        cached = self._itabs.get(itab)
        if cached is None:
            cached = self._itabs[itab] = self.u64(itab + 8)
        return cached

    def interface_value(self, type_addr: int, data: int) -> list | None:
        """[type name, message or None] for an interface value (type, data word)."""
        if type_addr == 0:
            return None
        name, offset = self.type_info(type_addr)
        message = None
        if offset is not None and data and self.capture_args:
            header = data + offset
            message = self.string(self.u64(header), self.u64(header + 8), MAX_MESSAGE)
        return [name, message]

    # -- the gdb agent's decoders, from registers ------------------------------------------
    def decode_registers(self, decoder: str | None, reg: dict[str, int]):
        if decoder == "cr-request":
            if not self.capture_args:
                return None
            return [self.string(reg["rdi"], reg["rsi"], MAX_NAME),
                    self.string(reg["r8"], reg["r9"], MAX_NAME)]
        if decoder == "cr-result":
            itab = reg["rcx"]
            error = self.interface_value(self.itab_type(itab), reg["rdi"]) if itab else None
            rbx = reg["rbx"]
            if rbx >= 1 << 63:
                rbx -= 1 << 64
            return [reg["rax"] & 0xFF != 0, rbx, error]
        if decoder == "go-panic":
            return self.interface_value(reg["rax"], reg["rbx"])
        # Probe-file decoders (docs/probes.md), as in the gdb agent.
        if decoder in ("go-key", "go-key-ctx"):
            if not self.capture_args:
                return None
            ptr, length = ("rbx", "rcx") if decoder == "go-key" else ("rdi", "rsi")
            return self.string(reg[ptr], reg[length], MAX_NAME)
        if decoder == "go-error":
            itab = reg["rax"]
            return self.interface_value(self.itab_type(itab), reg["rbx"]) if itab else None
        if decoder in ("go-duration", "go-duration-arg"):
            value = reg["rax" if decoder == "go-duration" else "rbx"]
            return value - (1 << 64) if value >= 1 << 63 else value
        return None


# -- by name, from the Variables Delve loaded ------------------------------------------------
def _child(var: dict, name: str) -> dict | None:
    for child in var.get("children") or []:
        if child.get("name") == name:
            return child
    return None


def _check(var: dict) -> dict:
    if var.get("unreadable"):
        raise Undecodable(f"{var.get('name')}: {var['unreadable']}")
    return var


def _find_request(var: dict, depth: int = 0) -> tuple[dict, dict] | None:
    """The Namespace and Name strings in a request (ctrl.Request embeds NamespacedName)."""
    if var.get("kind") != KIND_STRUCT or depth > 3:
        return None
    ns, name = _child(var, "Namespace"), _child(var, "Name")
    if ns is not None and name is not None and ns.get("kind") == name.get("kind") == KIND_STRING:
        return ns, name
    for child in var.get("children") or []:
        found = _find_request(child, depth + 1)
        if found:
            return found
    return None


def request_by_name(args: list[dict], capture: bool) -> list | None:
    """[namespace, name] from the arguments Delve loaded at the entry."""
    for var in args:
        if var.get("flags", 0) & FLAG_RETURN:
            continue
        found = _find_request(var)
        if found:
            ns, name = (_check(v) for v in found)
            return [ns.get("value", ""), name.get("value", "")] if capture else None
    raise Undecodable("no argument with Namespace and Name")


def results(args: list[dict]) -> tuple[dict, dict]:
    """(Result struct, error interface) among the results Delve loaded at a RET."""
    result = error = None
    for var in args:
        if not var.get("flags", 0) & FLAG_RETURN:
            continue
        if var.get("kind") == KIND_STRUCT and result is None:
            result = _check(var)
        elif var.get("kind") == KIND_INTERFACE:
            error = _check(var)
    if result is None or error is None:
        raise Undecodable("no (Result, error) results")
    return result, error


def message_by_name(concrete: dict) -> str | None:
    """The value's first field when it is a string at offset 0 (or the value itself when it
    is a string): what the gdb agent reads from the type descriptor."""
    kind = concrete.get("kind")
    if kind == KIND_STRING:
        return concrete.get("value")
    if kind == KIND_PTR:
        children = concrete.get("children") or []
        if not children:
            return None
        concrete = children[0]
        kind = concrete.get("kind")
    if kind != KIND_STRUCT:
        return None
    fields = concrete.get("children") or []
    if fields and fields[0].get("kind") == KIND_STRING and fields[0].get("addr") == concrete.get(
            "addr") and not fields[0].get("unreadable"):
        return fields[0].get("value")
    return None


def _int_value(var: dict) -> int:
    """An integer as Delve formats it: "1500", or "Millisecond (1000000)" when the value
    equals a constant of its type (or of any package: "main.backoffBase (5000000)")."""
    text = str(var.get("value") or "0").strip()
    match = _CONSTANT.search(text)
    return int(match[1]) if match else int(text)


def frame_key(args: list[dict]) -> int | None:
    """A stand-in for the stack pointer when no register was read: the address of a result's
    stack slot, fixed for a given frame (the pairer compares it only with hits of the same
    breakpoint on the same goroutine)."""
    for var in args:
        if var.get("flags", 0) & FLAG_RETURN and not var.get("flags", 0) & FLAG_FAKE_ADDRESS:
            if var.get("addr"):
                return int(var["addr"])
    return None


def result_by_name(args: list[dict], memory: Memory) -> list:
    """[requeue, requeue_after_ns, error] from the results Delve loaded at a RET. The
    error's type name is read from its itab (one memory read, then cached)."""
    result, error = results(args)
    requeue = _child(result, "Requeue")
    after = _child(result, "RequeueAfter")
    requeue_v = requeue is not None and _check(requeue).get("value") == "true"
    after_v = _int_value(_check(after)) if after is not None else 0
    concrete = (error.get("children") or [None])[0]
    if concrete is None or concrete.get("kind") == KIND_INVALID or (
            concrete.get("type") == "void" and not concrete.get("addr")):
        return [requeue_v, after_v, None]
    _check(concrete)
    name = None
    if error.get("addr") and not error.get("flags", 0) & FLAG_FAKE_ADDRESS:
        itab = memory.u64(int(error["addr"]))
        if itab:
            name = memory.type_info(memory.itab_type(itab))[0]
    if name is None:
        name = shorten_type(concrete.get("type", "?"))
    message = message_by_name(concrete) if memory.capture_args else None
    return [requeue_v, after_v, [name, message]]
