"""Instruction-level facts the tracer needs to place breakpoints (capstone, x86-64)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import capstone

from .analyze import read_function_code
from .model import BinaryInfo, Function

# The stack check is the first thing in a Go function; a handful of instructions
# covers every variant (small frame: cmp+jbe; large: lea/cmp/jbe; huge: mov/sub/jb/cmp/jbe;
# ABI0 assembly: mov rcx, fs:[-8]; cmp; jbe).
_PROLOGUE_MAX_INSNS = 12
# The morestack block is: spill register args, call morestack, reload, jmp entry.
_MORESTACK_MAX_INSNS = 48
_RET_MNEMONICS = frozenset({"ret", "repz ret", "rep ret", "bnd ret"})


@lru_cache(maxsize=1)
def _cs() -> capstone.Cs:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = False
    return cs


Insn = tuple[int, int, str, str]  # (address, size, mnemonic, op_str)


def iter_instructions(code: bytes, addr: int) -> Iterator[Insn]:
    """Linear sweep that survives undecodable bytes by skipping one byte at a time.

    Go and C compilers keep jump tables out of .text, so a linear sweep stays in
    sync; the resync only matters for junk such as a truncated final instruction.
    """
    cs = _cs()
    off = 0
    n = len(code)
    while off < n:
        for insn in cs.disasm_lite(code[off:], addr + off):
            off += insn[1]
            yield insn
        if off < n:
            off += 1  # capstone stopped on an undecodable byte: skip it


def _branch_target(op_str: str) -> int | None:
    try:
        return int(op_str, 16)
    except ValueError:
        return None  # indirect jump


def go_post_prologue(info: BinaryInfo, fn: Function) -> int:
    """Address just after the stack-check branch to morestack; fn.entry if none.

    Why: a breakpoint at the entry of a Go function fires twice when the stack
    has to grow (morestack re-runs the function from its entry). After the
    ``jbe morestack`` the goroutine is committed to running the body, and the
    register arguments (ABIInternal) are still untouched.
    """
    code = read_function_code(info, fn)
    insns = []
    for insn in _cs().disasm_lite(code[: 16 * _PROLOGUE_MAX_INSNS], fn.entry):
        insns.append(insn)
        if len(insns) >= _PROLOGUE_MAX_INSNS:
            break
    for k, (addr, size, mnem, op_str) in enumerate(insns):
        if mnem not in ("jbe", "jna"):
            continue
        target = _branch_target(op_str)
        if target is None or not (addr < target < fn.end):
            continue
        after = addr + size
        if _is_stack_check(insns[:k]) or _jumps_back_to_entry(code, fn, target):
            return after
    return fn.entry


def go_stack_check_branch(info: BinaryInfo, fn: Function, after: int,
                          code: bytes | None = None) -> int | None:
    """The address of the stack-check ``jbe`` that ends at ``after`` (a post-prologue entry),
    or None. The branch is where the arguments are already in their registers and the stack
    pointer is the caller's; it is taken only when the stack must grow first. `code`: the
    function's bytes when the caller has them already."""
    if code is None:
        code = read_function_code(info, fn)
    insns = []
    for insn in _cs().disasm_lite(code[: 16 * _PROLOGUE_MAX_INSNS], fn.entry):
        addr, size, mnem, _op = insn
        if addr + size == after:
            return addr if mnem in ("jbe", "jna") and _is_stack_check(insns) else None
        insns.append(insn)
        if addr >= after or len(insns) >= _PROLOGUE_MAX_INSNS:
            break
    return None


def _is_stack_check(before: list[Insn]) -> bool:
    """The instruction before the jbe compares against g.stackguard0 (g+0x10),
    with g in r14 (ABIInternal) or loaded from TLS (fs:) by ABI0 code."""
    if not before:
        return False
    _a, _s, mnem, op_str = before[-1]
    if mnem != "cmp" or "+ 0x10]" not in op_str:
        return False
    return "[r14 + 0x10]" in op_str or any("fs:" in ops for _a, _s, _m, ops in before)


def _jumps_back_to_entry(code: bytes, fn: Function, target: int) -> bool:
    """The branch target is the morestack block, which ends by jumping to fn.entry."""
    for n, (_a, _s, mnem, op_str) in enumerate(
            _cs().disasm_lite(code[target - fn.entry:], target)):
        if mnem == "jmp" and _branch_target(op_str) == fn.entry:
            return True
        if n >= _MORESTACK_MAX_INSNS or mnem in _RET_MNEMONICS:
            return False
    return False


def return_addresses(info: BinaryInfo, fn: Function) -> list[int]:
    """Every RET in [fn.entry, fn.end) by linear sweep.

    Go pads between functions (and after calls that never return) with int3,
    which decodes as one-byte instructions, so the sweep walks through padding
    without losing sync. A tail call (``jmp``) is not a return and is not reported.
    """
    code = read_function_code(info, fn)
    return [addr for addr, _size, mnem, _ops in iter_instructions(code, fn.entry)
            if mnem in _RET_MNEMONICS]


def native_entry(info: BinaryInfo, fn: Function) -> int:
    """Breakpoint address for a native (C/C++/Rust) function: its first instruction.

    Why the entry is fine here: native code has no stack-growth re-entry like Go's
    morestack, so a breakpoint before the prologue fires exactly once per call, and
    at that point the SysV arguments are still in rdi/rsi/rdx/rcx/r8/r9 and the
    return address is at [rsp] — the easiest state to decode (later, the prologue
    may have clobbered or spilled them).
    """
    return fn.entry
