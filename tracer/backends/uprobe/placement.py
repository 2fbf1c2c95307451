"""Where each uprobe goes. x86 runs some probed instructions in the kernel (push of a
register, jumps, calls: about 1.5 µs a hit here) and single-steps every other one out of
line (about 11.5 µs: a trap more). Go ≤ 1.20 starts its frames with `sub rsp`, which is
stepped; the stack-check branch just before it is emulated, holds the same registers and the
caller's stack pointer, and is taken only when the stack must grow (the function then starts
again), so an entry probe moves there and a hit with the branch taken is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.binary.analyze import read_function_code
from tracer.binary.disasm import go_stack_check_branch
from tracer.binary.model import BinaryInfo
from tracer.probes.plan import Point

CF, ZF = 0x1, 0x40  # jbe is taken when either is set


@dataclass(frozen=True)
class Placement:
    addr: int  # where the uprobe goes (static address)
    branch: bool  # at the stack check: a hit with CF or ZF set is not an entry


def kernel_emulates(code: bytes) -> bool:
    """Whether x86 uprobes emulate the instruction these bytes start with (no single step):
    push of a register, a jump, conditional jump or call (arch/x86/kernel/uprobes.c)."""
    if not code:
        return False
    b = code[0]
    if 0x50 <= b <= 0x57 or 0x70 <= b <= 0x7F or b in (0xE8, 0xE9, 0xEB):
        return True
    if b == 0x41 and len(code) > 1 and 0x50 <= code[1] <= 0x57:
        return True  # push r8..r15
    return b == 0x0F and len(code) > 1 and 0x80 <= code[1] <= 0x8F


def place(info: BinaryInfo, point: Point, entry: bool) -> Placement:
    """The point's own address, or its function's stack-check branch when the point is a Go
    post-prologue entry on a stepped instruction."""
    if not entry or info.language != "go":
        return Placement(point.addr, False)
    fn = info.function_at(point.addr)
    if fn is None:
        return Placement(point.addr, False)
    code = read_function_code(info, fn)
    if kernel_emulates(code[point.addr - fn.entry:point.addr - fn.entry + 2]):
        return Placement(point.addr, False)
    branch = go_stack_check_branch(info, fn, point.addr, code)
    if branch is None:
        return Placement(point.addr, False)
    return Placement(branch, True)


def branch_taken(flags: int) -> bool:
    return bool(flags & (CF | ZF))
