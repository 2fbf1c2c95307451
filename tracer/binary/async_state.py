"""Where a wrapper future keeps the state of the async body inlined into it, from the code of
its poll and of its drop (capstone), when the build has no DWARF.

A release build inlines an async body (`reconcile::{closure#0}`) into the poll of the future
that holds it (kube-runtime's `Instrumented<IntoFuture<body>>`, tokio's task): there is no
function of the body's own to read its state from. The wrapper's code still shows it, twice:

- its poll dispatches on the body's state: `movzx eax, byte [self + OFF]`, then a jump table
  (`lea rcx, [rip + T]; movsxd rax, dword [rcx + rax*4]; add rax, rcx; jmp rax`);
- its drop hands `self + X` to the body's own drop glue (a function whose type names the body
  or a holder of it), which reads the state at `+ Y` and branches on it.

The offset is taken only when X + Y == OFF. The values are rustc's for every coroutine
(0 Unresumed, 1 Returned, 2 Panicked/poisoned, 3 and up one per suspension point), and each is
checked on this binary: the table's entry 1 calls `panic_const_async_fn_resumed` ("`async fn`
resumed after completion") and entry 2 `panic_const_async_fn_resumed_panic` ("resumed after
panicking"), entries 0 and 3+ do not; every value the poll writes to the byte is 1, 2 or a
suspension point, and 1 (it completed) is among them. Any fact missing or in disagreement: no
state (the caller says why; a span is then never given a status from it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .analyze import read_function_code
from .disasm import iter_instructions
from .elfimage import ElfImage
from .model import BinaryInfo, Function
from .rustnames import demangled
from .vtables import code_slots

UNRESUMED, RETURNED, PANICKED, FIRST_SUSPENDED = 0, 1, 2, 3
RESUMED_AFTER_RETURN = "core::panicking::panic_const::panic_const_async_fn_resumed"
RESUMED_AFTER_PANIC = "core::panicking::panic_const::panic_const_async_fn_resumed_panic"

POLL_SCAN_INSNS = 160  # the dispatch comes after the wrapper's own work (tracing's span enter)
DROP_SCAN_INSNS = 200
GLUE_SCAN_INSNS = 24  # a drop glue reads the state first
BLOCK_INSNS = 6  # a panic block: lea rdi, [location]; call panic
MAX_STATES = 256
MAX_DEPTH = 2  # drop -> (Drop impl ->) the body's glue
CALLER_SAVED = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11")


@dataclass(frozen=True)
class BodyState:
    offset: int  # the state byte, from the wrapper's `self`
    states: int  # 0, 1, 2 and the suspension points: 3 .. states - 1
    drop_offset: int  # X: where the drop hands the body to its glue
    glue_offset: int  # Y: where the glue reads the state
    written: tuple[int, ...]  # what the poll writes to the byte

    def describe(self) -> str:
        last = self.states - 1
        suspended = f"{FIRST_SUSPENDED}" if last == FIRST_SUSPENDED else \
            f"{FIRST_SUSPENDED}..{last}"
        return (f"the wrapper's poll dispatches on it, its drop gives +{self.drop_offset:#x} "
                f"to the body's drop glue, which reads +{self.glue_offset:#x}; read at each "
                f"poll and at the drop: 1 completed, 2 panicked, 0 and {suspended} not "
                "completed, as the code was checked to use them")


_REG64 = {}
for _full, _parts in {
        "rax": ("eax", "ax", "al"), "rbx": ("ebx", "bx", "bl"), "rcx": ("ecx", "cx", "cl"),
        "rdx": ("edx", "dx", "dl"), "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"),
        "rbp": ("ebp", "bp", "bpl"), "rsp": ("esp", "sp", "spl")}.items():
    _REG64[_full] = _full
    for _p in _parts:
        _REG64[_p] = _full
for _n in range(8, 16):
    for _suffix in ("", "d", "w", "b"):
        _REG64[f"r{_n}{_suffix}"] = f"r{_n}"

_MEM = re.compile(r"^(byte|word|dword|qword) ptr \[(\w+)(?: \+ (0x[0-9a-f]+|\d+))?\]$")
_SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8}


def _reg(name: str) -> str | None:
    return _REG64.get(name.strip())


def _int(text: str) -> int | None:
    try:
        return int(text.strip(), 0)
    except ValueError:
        return None


class _Tracker:
    """Which registers hold `self + k`, along a linear sweep (a call clobbers the
    caller-saved registers; any other write to a register but an epilogue's pop forgets
    it)."""

    def __init__(self, self_reg: str) -> None:
        self.at: dict[str, int] = {self_reg: 0}

    def step(self, mnem: str, ops: str) -> None:
        parts = [p.strip() for p in ops.split(",")] if ops else []
        if mnem == "call":
            for r in CALLER_SAVED:
                self.at.pop(r, None)
            return
        if not parts:
            return
        dst = _reg(parts[0]) if not parts[0].endswith("]") else None
        if dst is None:
            return
        if mnem == "mov" and len(parts) == 2 and _reg(parts[1]) and parts[0] == dst \
                and parts[1] == _reg(parts[1]):
            src = _reg(parts[1])
            if src in self.at:
                self.at[dst] = self.at[src]
                return
        elif mnem == "lea" and len(parts) == 2:
            m = re.match(r"^\[(\w+)(?: ([+-]) (0x[0-9a-f]+|\d+))?\]$", parts[1])
            if m and _reg(m.group(1)) in self.at and parts[0] == dst:
                delta = int(m.group(3), 0) if m.group(3) else 0
                self.at[dst] = self.at[_reg(m.group(1))] + (-delta if m.group(2) == "-"
                                                             else delta)
                return
        elif mnem in ("add", "sub") and len(parts) == 2 and dst in self.at \
                and parts[0] == dst and _int(parts[1]) is not None:
            delta = _int(parts[1]) or 0
            if delta >= 1 << 63:
                delta -= 1 << 64
            self.at[dst] += delta if mnem == "add" else -delta
            return
        # A pop is an epilogue's, before a RET: the blocks after it are reached by jumps from
        # the body, where the callee-saved registers still hold what they held there.
        if mnem not in ("cmp", "test", "push", "pop") and not mnem.startswith("j"):
            self.at.pop(dst, None)

    def offset_of(self, operand: str) -> tuple[int, int] | None:
        """(size, self-relative address) of a memory operand based on a tracked register."""
        m = _MEM.match(operand.strip())
        if not m or _reg(m.group(2)) not in self.at:
            return None
        return _SIZES[m.group(1)], self.at[_reg(m.group(2))] + (int(m.group(3), 0)
                                                                 if m.group(3) else 0)


def _insns(info: BinaryInfo, fn: Function, limit: int | None = None):
    out = []
    for insn in iter_instructions(read_function_code(info, fn), fn.entry):
        out.append(insn)
        if limit is not None and len(out) >= limit:
            break
    return out


def _call_target(info: BinaryInfo, addr: int, size: int, ops: str) -> int | None:
    """A call's target: direct, or through a GOT slot (`qword ptr [rip + d]`)."""
    direct = _int(ops)
    if direct is not None:
        return direct
    m = re.match(r"^qword ptr \[rip ([+-]) (0x[0-9a-f]+)\]$", ops)
    if not m:
        return None
    slot = addr + size + (int(m.group(2), 16) * (-1 if m.group(1) == "-" else 1))
    return code_slots(info.path).get(slot)


def _name_at(info: BinaryInfo, addr: int | None) -> str | None:
    fn = info.function_at(addr) if addr is not None else None
    if fn is None or fn.entry != addr:
        return None
    return _LLVM_SUFFIX.sub("", demangled(fn.name))  # a local symbol's ` (.llvm.123)`


_LLVM_SUFFIX = re.compile(r" \(\.llvm\.\d+\)$")


def poll_dispatch(info: BinaryInfo, poll: Function, self_reg: str
                  ) -> tuple[int, list[int]] | str:
    """(the state's offset from self, the jump table's targets) of the first byte of `self`
    the poll dispatches on through a jump table, or why none was found."""
    insns = _insns(info, poll, POLL_SCAN_INSNS)
    track = _Tracker(self_reg)
    for i, (_addr, _size, mnem, ops) in enumerate(insns):
        if mnem == "movzx" and "," in ops:
            dst, src = (p.strip() for p in ops.split(",", 1))
            where = track.offset_of(src)
            if where is not None and where[0] == 1:
                table = _jump_table(insns[i + 1:i + 6], _reg(dst))
                if table is not None:
                    targets = _table_targets(info, poll, table)
                    if len(targets) >= FIRST_SUSPENDED:
                        return where[1], targets
        track.step(mnem, ops)
    return "its poll dispatches on no byte of the future through a jump table"


def _jump_table(insns, index: str | None) -> int | None:
    """T of `lea R, [rip + T]; movsxd S, dword [R + index*4]; add S, R; jmp S`."""
    base = table = None
    for addr, size, mnem, ops in insns:
        if mnem == "lea":
            m = re.match(r"^(\w+), \[rip ([+-]) (0x[0-9a-f]+)\]$", ops)
            if m:
                base = _reg(m.group(1))
                table = addr + size + int(m.group(3), 16) * (-1 if m.group(2) == "-" else 1)
        elif mnem == "movsxd" and base is not None:
            m = re.match(r"^\w+, dword ptr \[(\w+) \+ (\w+)\*4\]$", ops)
            if not m or _reg(m.group(1)) != base or _reg(m.group(2)) != index:
                return None
        elif mnem == "jmp":
            return table if _reg(ops) is not None and base is not None else None
    return None


def _table_targets(info: BinaryInfo, fn: Function, table: int) -> list[int]:
    """The entries of a table of 32-bit offsets from its base, as long as they land in fn."""
    targets = []
    with ElfImage(info.path) as img:
        for i in range(MAX_STATES):
            try:
                raw = img.read(table + 4 * i, 4)
            except Exception:  # noqa: BLE001 - past the section
                break
            target = table + int.from_bytes(raw, "little", signed=True)
            if not fn.entry <= target < fn.end:
                break
            targets.append(target)
    return targets


def _block_calls(info: BinaryInfo, fn: Function, start: int) -> set[str]:
    """The names of the functions the few instructions at `start` call."""
    code = read_function_code(info, fn)[start - fn.entry:]
    names = set()
    for n, (addr, size, mnem, ops) in enumerate(iter_instructions(code[:64], start)):
        if n >= BLOCK_INSNS or mnem in ("ret", "jmp", "ud2"):
            break
        if mnem == "call":
            name = _name_at(info, _call_target(info, addr, size, ops))
            if name:
                names.add(name)
    return names


def written_values(info: BinaryInfo, poll: Function, self_reg: str, offset: int
                   ) -> set[int] | None:
    """The values the poll stores to the state byte: immediates, a register loaded with one
    in the few instructions before (on either path into the store), or the matching byte of
    a wider store that covers it. None: a store whose value is not a constant."""
    insns = _insns(info, poll)
    track = _Tracker(self_reg)
    found: set[int] = set()
    for i, (_addr, _size, mnem, ops) in enumerate(insns):
        if mnem == "mov" and "," in ops:
            dst, src = (p.strip() for p in ops.split(",", 1))
            where = track.offset_of(dst)
            if where is not None and where[1] <= offset < where[1] + where[0]:
                shift = 8 * (offset - where[1])
                value = _int(src)
                if value is not None:
                    found.add((value >> shift) & 0xFF)
                elif _reg(src) is not None and where[0] == 1:
                    loaded = _loaded(insns[max(0, i - 8):i], _reg(src))
                    if not loaded:
                        return None
                    found |= loaded
                else:
                    return None
        track.step(mnem, ops)
    return found


def _loaded(insns, reg: str | None) -> set[int]:
    """Constants moved into `reg` (any width) in these instructions."""
    out = set()
    for _addr, _size, mnem, ops in insns:
        if mnem == "mov" and "," in ops:
            dst, src = (p.strip() for p in ops.split(",", 1))
            if _reg(dst) == reg and _int(src) is not None:
                out.add((_int(src) or 0) & 0xFF)
        elif mnem == "xor" and ops.count(",") == 1:
            a, b = (p.strip() for p in ops.split(","))
            if a == b and _reg(a) == reg:
                out.add(0)
    return out


def drop_handoff(info: BinaryInfo, drop: Function, is_body_drop: Callable[[str], bool],
                 base: int = 0, depth: int = 0) -> tuple[int, int] | str:
    """(X, Y): the drop calls the body's drop glue with `self + X` in RDI, and that glue reads
    its state byte at `+ Y` first thing; through a Drop impl the drop calls with `self`."""
    track = _Tracker("rdi")
    for addr, size, mnem, ops in _insns(info, drop, DROP_SCAN_INSNS):
        if mnem in ("call", "jmp") and "rdi" in track.at:
            target = _call_target(info, addr, size, ops)
            name = _name_at(info, target)
            if name is not None and target is not None:
                at = base + track.at["rdi"]
                if is_body_drop(name):
                    y = glue_state_offset(info, info.function_at(target))
                    return (at, y) if y is not None else \
                        f"the body's drop glue ({name}) reads no state byte first"
                if depth < MAX_DEPTH - 1 and name.endswith(" as core::ops::drop::Drop>::drop"):
                    found = drop_handoff(info, info.function_at(target), is_body_drop, at,
                                         depth + 1)
                    if not isinstance(found, str):
                        return found
        if mnem == "ret":
            break
        track.step(mnem, ops)
    return "its drop hands the body to no drop glue of the body's"


def glue_state_offset(info: BinaryInfo, glue: Function | None) -> int | None:
    """Y of the glue's first `movzx r, byte [rdi + Y]` that a compare or a jump table uses."""
    if glue is None:
        return None
    track = _Tracker("rdi")
    insns = _insns(info, glue, GLUE_SCAN_INSNS)
    for i, (_addr, _size, mnem, ops) in enumerate(insns):
        if mnem in ("call", "ret", "jmp"):
            return None
        if mnem == "movzx" and "," in ops:
            dst, src = (p.strip() for p in ops.split(",", 1))
            where = track.offset_of(src)
            if where is not None and where[0] == 1:
                reg = _reg(dst)
                used = any(m in ("cmp", "test", "movsxd")
                           and reg in {_reg(w) for w in re.findall(r"\w+", o)}
                           for _a, _s, m, o in insns[i + 1:i + 4])
                return where[1] if used else None
        track.step(mnem, ops)
    return None


def body_state(info: BinaryInfo, poll: Function, drop: Function, self_reg: str,
               is_body_drop: Callable[[str], bool]) -> BodyState | str:
    """The body's state in a wrapper future whose poll and drop agree on it (see the module's
    doc), or why not (one line)."""
    dispatch = poll_dispatch(info, poll, self_reg)
    if isinstance(dispatch, str):
        return dispatch
    offset, targets = dispatch
    handoff = drop_handoff(info, drop, is_body_drop)
    if isinstance(handoff, str):
        return handoff
    x, y = handoff
    if x + y != offset:
        return (f"its poll dispatches on +{offset:#x} but its drop's glue reads "
                f"+{x:#x} + {y:#x}: they disagree")
    returned = _block_calls(info, poll, targets[RETURNED])
    panicked = _block_calls(info, poll, targets[PANICKED])
    if RESUMED_AFTER_RETURN not in returned or RESUMED_AFTER_PANIC not in panicked:
        return ("the dispatch's entries 1 and 2 do not call the `async fn` resumed-after-"
                "completion and resumed-after-panicking panics")
    for value in [UNRESUMED, *range(FIRST_SUSPENDED, len(targets))]:
        if _block_calls(info, poll, targets[value]) & {RESUMED_AFTER_RETURN,
                                                        RESUMED_AFTER_PANIC}:
            return f"the dispatch's entry {value} panics as a finished future's would"
    written = written_values(info, poll, self_reg, offset)
    if written is None:
        return "its poll writes a value to the state that is not a constant"
    allowed = {RETURNED, PANICKED, *range(FIRST_SUSPENDED, len(targets))}
    if RETURNED not in written or not written <= allowed:
        return (f"its poll writes {sorted(written)} to the state: not the completed value 1 "
                f"and suspension points 3..{len(targets) - 1}")
    return BodyState(offset, len(targets), x, y, tuple(sorted(written)))
