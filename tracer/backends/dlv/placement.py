"""Where each Delve breakpoint goes.

Delve takes any SIGTRAP of a thread whose PC is one past a breakpoint for a hit of that
breakpoint and rewinds the PC onto it (pkg/proc/native: stop1 in proc_linux.go calls
SetCurrentBreakpoint(adjustPC=true) for every thread that stopped with a SIGTRAP, without
looking at the signal's origin; the same in Delve 1.20.2 and 1.27.2). Its own halt is
kill(pid, SIGTRAP) (requestManualStop, both versions). After a hit, Delve steps the thread over
the breakpoint's instruction; when that instruction is one byte and falls through (Go's
`push rbp` after the stack check), the thread then sits exactly one past the breakpoint, and a
halt's SIGTRAP taken there makes Delve rewind it: the push runs twice and the function returns
into its own stack (SIGSEGV, or the runtime's "fatal error: fault"). Measured: with a SIGTRAP
sent every 3 ms during hits at 400 calls/s, the operator died in 8 runs of 8 with the
breakpoint on `push rbp`, in none of 8 with it on the next instruction (Delve 1.20.2); 7 of 8
and none of 8 with Delve 1.27.2. So such a breakpoint moves past the one-byte instructions;
a push moves the stack pointer, which the hit reports as it was before (the pairer matches an
entry's stack pointer with its RET's).
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.targets.process import file_bytes

# Without a prefix, these opcodes are whole one-byte instructions: push of a register (the
# stack pointer moves 8 down) and nop. Nothing else at an entry is moved past.
PUSHES = range(0x50, 0x58)
NOP = 0x90
LOOK = 16  # bytes read: more one-byte pushes than any prologue has


@dataclass(frozen=True)
class Placement:
    addr: int  # static address of the breakpoint
    sp_adjust: int  # add to the stack pointer read there to get the point's own


def place(exe: str, addr: int) -> Placement:
    """The first address at or after `addr` that is not a one-byte push or nop."""
    try:
        code = file_bytes(exe, addr, LOOK)
    except ValueError:
        return Placement(addr, 0)
    skipped = 0
    sp_adjust = 0
    while skipped < len(code) and (code[skipped] in PUSHES or code[skipped] == NOP):
        sp_adjust += 8 if code[skipped] in PUSHES else 0
        skipped += 1
    return Placement(addr + skipped, sp_adjust)
