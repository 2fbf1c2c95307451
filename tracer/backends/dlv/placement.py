"""Where each Delve breakpoint goes.

Delve takes any SIGTRAP of a thread whose PC is one past a breakpoint for a hit of that
breakpoint and rewinds the PC onto it (pkg/proc/native, SetCurrentBreakpoint: it does not look
at the signal's origin). Its own halt is kill(pid, SIGTRAP). After a hit, Delve steps the
thread over the breakpoint's instruction; when that instruction is one byte and falls through
(Go's `push rbp` after the stack check), the thread then sits exactly one past the breakpoint,
and a halt's SIGTRAP taken there makes Delve rewind it: the push runs twice and the function
returns into its own stack (SIGSEGV). Measured: with a SIGTRAP sent every 3 ms during hits at
400 calls/s, the operator died in 8 runs of 8 with the breakpoint on `push rbp`, in none of 8
with it on the next instruction. So such a breakpoint moves past the one-byte instructions;
a push moves the stack pointer, which the hit reports as it was before (the pairer matches an
entry's stack pointer with its RET's).
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.binary.disasm import iter_instructions
from tracer.targets.process import file_bytes

LONGEST = 15  # an x86 instruction's most bytes


@dataclass(frozen=True)
class Placement:
    addr: int  # static address of the breakpoint
    sp_adjust: int  # add to the stack pointer read there to get the point's own


def _one_byte_step(code: bytes) -> int | None:
    """What a one-byte instruction that falls through does to the stack pointer (push: -8,
    nop: 0); None for anything else (longer, a branch or ret, or one that changes other
    registers a decoder may read)."""
    if not code:
        return None
    b = code[0]
    if 0x50 <= b <= 0x57:
        return -8
    if b == 0x90:
        return 0
    return None


def place(exe: str, addr: int) -> Placement:
    """The first address at or after `addr` that is not a one-byte push or nop."""
    sp_adjust = 0
    try:
        code = file_bytes(exe, addr, LONGEST * 4)
    except ValueError:
        return Placement(addr, 0)
    at = addr
    for insn_addr, size, _, _ in iter_instructions(code, addr):
        if insn_addr != at or size != 1:
            break
        moved = _one_byte_step(code[at - addr:at - addr + 1])
        if moved is None:
            break
        sp_adjust -= moved
        at += 1
    return Placement(at, sp_adjust)
