"""Turn what Delve reports at a breakpoint into the values every backend captures.

The value shapes are the contract's (tracer/probes/decoders.py), so spans are the same
whichever backend recorded them.

Two ways to read them:
- by name: Delve loads the function's arguments and results from DWARF (`LoadArgs` on the
  breakpoint, no extra round trip). Delve 1.27.2 reads them on -N -l and optimized builds
  alike (1.20.2 gave "unreadable: empty OP stack" for optimized results); `auto` still
  takes registers on optimized builds.
- from registers (Go's register ABI, by the contract's decoders) and memory: one
  ListRegisters round trip per hit, then ExamineMemory reads for strings and type names.

Errors either way are decoded from their itab and data word in memory
(tracer/binary/govalues.py): the runtime's type name (`*controllers.RetryableError`, not
Delve's import path), and a message only for the types whose Error() is known.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from tracer.binary.govalues import MAX_MESSAGE, MAX_NAME, GoMemory
from tracer.probes import decoders

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


class Memory(GoMemory):
    """The shared Go value decoding (tracer.binary.govalues) over Delve's memory reads."""

    def decode_registers(self, decoder: str | None, reg: dict[str, int]):
        """The value of `decoder` from the registers of a hit (the contract's decoders)."""
        return decoders.decode(decoder, reg.__getitem__, self)


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
    """[requeue, requeue_after_ns, error(, priority)] from the results Delve loaded at a
    RET. The error is decoded from its itab and data word in memory, like the other
    backends do (its message only for the types whose Error() is known)."""
    result, error = results(args)
    requeue = _child(result, "Requeue")
    after = _child(result, "RequeueAfter")
    priority = _child(result, "Priority")
    requeue_v = requeue is not None and _check(requeue).get("value") == "true"
    after_v = _int_value(_check(after)) if after is not None else 0
    concrete = (error.get("children") or [None])[0]
    value = None
    if concrete is not None and concrete.get("kind") != KIND_INVALID and not (
            concrete.get("type") == "void" and not concrete.get("addr")):
        _check(concrete)
        if error.get("addr") and not error.get("flags", 0) & FLAG_FAKE_ADDRESS:
            address = int(error["addr"])
            value = memory.iface_error(memory.u64(address), memory.u64(address + 8))
        else:
            value = [shorten_type(concrete.get("type", "?")), None, None]
    if priority is None:
        return [requeue_v, after_v, value]
    _check(priority)
    # A pointer's one child is the value it points at; a nil pointer's has address 0.
    target = (priority.get("children") or [None])[0]
    if target is None or not target.get("addr"):
        return [requeue_v, after_v, value, None]
    return [requeue_v, after_v, value, _int_value(_check(target))]
