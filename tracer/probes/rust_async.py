"""Rust async functions: one span per future, from its first poll to the poll that completes
it or to its drop, keyed by the future's address.

The seam with the probe files: `tracer.probes.compile` hands every `kind = "rust-async"`
function of a probe to `compile_async(info, spec, plan)`, which appends the plan's points
(key "future") and returns the names of the functions it instruments; the synchronous
pairer hands hits keyed by "future" to the async pairer (tracer.session.async_pairing).

What is placed, per async fn (`crate::reconcile` builds the future, its body is the poll
function `crate::reconcile::{{closure}}`, DWARF `{async_fn#0}`):
- the poll's first instruction (POLL): the future is `self`, RSI (RDI is the slot of the
  returned Poll); its `__state` byte says 0 Unresumed (a first poll), 3+ suspended;
- every RET of the poll (POLL_EXIT): the state after it (1 Returned: finished), and the
  returned `Poll<Result<..>>` read through the layout DWARF gives (Ready/Pending, Ok/Err);
- `core::ptr::drop_in_place<..{{closure}}>` (DROP, self in RDI): the end marker when the
  state cannot be read (no DWARF and no recognisable state dispatch), and for futures
  dropped before they completed.
Where the state lives: DWARF's `__state` member of the future's type, else the poll's own
dispatch on it (`movzx eax, byte [rsi + OFF]` then a jump table, as rustc emits it at every
optimisation level). Release builds (cargo's default: no DWARF) keep the poll and the drop as
functions of their own when the future is boxed as `dyn Future` (their vtable needs them);
when an outer future has inlined both, name its poll and its drop in the probe (`poll`,
`drop`): the span is then keyed by the outer future and ended by its drop.
"""

from __future__ import annotations

import re

from tracer.binary.analyze import read_function_code
from tracer.binary.async_state import BodyState, body_state
from tracer.binary.disasm import iter_instructions, native_entry, return_addresses
from tracer.binary.model import BinaryInfo, Function
from tracer.binary.rustnames import demangled
from tracer.binary.vtables import vtable_methods
from tracer.errors import UserError
from tracer.probes.decoders import RUST_DROP
from tracer.probes.plan import (
    DROP,
    KEY_FUTURE,
    POLL,
    POLL_EXIT,
    SPAN_RECONCILE,
    SPAN_STEP,
    Plan,
    Point,
)
from tracer.probes.spec import ROLE_END, ROLE_STEP, FunctionSpec

# An async fn's body: legacy names `::{{closure}}`, v0 names (rustc's default from 1.97 on)
# `::{closure#0}`.
CLOSURE = "::{{closure}}"
CLOSURES = (CLOSURE, "::{closure#0}")
# A type's drop glue, as legacy and v0 names print it; rustc 1.97 renamed drop_in_place's
# glue instances drop_glue.
DROP_PREFIX = "core::ptr::drop_in_place<"
DROP_PREFIXES = (DROP_PREFIX, "core::ptr::drop_in_place::<", "core::ptr::drop_glue<",
                 "core::ptr::drop_glue::<")
GEN_FUTURE = "core::future::from_generator::GenFuture<"
FUTURE_POLL = " as core::future::future::Future>::poll"
DROP_IMPL = " as core::ops::drop::Drop>::drop"
# A poll returning more than two registers' worth returns it through memory (RAX = the slot).
MAX_REGISTER_RETURN = 16
MAX_RESULT_BYTES = 64
# The state dispatch is among the first instructions of the poll.
STATE_SCAN_INSNS = 40


def is_drop(name: str) -> bool:
    return name.startswith(DROP_PREFIXES)


def dropped_type(drop_name: str) -> str:
    """`T` of `core::ptr::drop_in_place<T>` (and its v0 and drop_glue spellings)."""
    prefix = next(p for p in DROP_PREFIXES if drop_name.startswith(p))
    return drop_name[len(prefix):-1]


def _names(info: BinaryInfo) -> list[tuple[Function, str]]:
    return [(fn, demangled(fn.name)) for fn in info.functions]


def matching_parts(info: BinaryInfo, spec: FunctionSpec) -> tuple[list[str], list[str]]:
    """What `tracer probes check` reports: the poll functions (the reconciles) and the drop
    markers that end them."""
    named = _names(info)
    polls = [(fn, name, _drop_for(named, spec, name)) for fn, name in _polls(named, spec)]
    if not polls and spec.poll is None:
        polls = [(fn, demangled(fn.name), drop)
                 for fn, _inner, drop in _inlined_polls(info, named, spec)]
    if not polls and spec.poll is None:
        polls = [(fn, demangled(fn.name), drop)
                 for fn, _inner, drop in _wrapper_polls(info, named, spec)]
    names = [name for _fn, name, _drop in polls]
    drops = [drop[1] for _fn, _name, drop in polls if drop is not None]
    return list(dict.fromkeys(names)), list(dict.fromkeys(drops))


def _polls(named: list[tuple[Function, str]], spec: FunctionSpec) -> list[tuple[Function, str]]:
    rx = spec.poll or spec.match
    return [(fn, name) for fn, name in named
            if rx.search(name) and not is_drop(name)
            and not (spec.exclude and spec.exclude.search(name))]


def _drop_for(named: list[tuple[Function, str]], spec: FunctionSpec,
              poll_name: str) -> tuple[Function, str] | None:
    if spec.drop is not None:
        found = [(fn, name) for fn, name in named if spec.drop.search(name)]
    else:
        # rustc before 1.68 wraps an async body (a generator) in GenFuture, at offset 0.
        wanted = {f"{prefix}{inner}>" for prefix in DROP_PREFIXES
                  for inner in (poll_name, f"{GEN_FUTURE}{poll_name}>")}
        found = [(fn, name) for fn, name in named if name in wanted]
    return found[0] if found else None


def _inlined_polls(info: BinaryInfo, named: list[tuple[Function, str]],
                   spec: FunctionSpec) -> list[tuple[Function, str, tuple[Function, str]]]:
    """Async bodies whose poll was inlined, found through a drop: a future boxed as
    `dyn Future` has a vtable [drop_in_place, size, align, poll], so the function next to
    its drop there is the (outer) poll that contains the inlined body. The outer future may
    be the body's own (GenFuture) or a wrapper holding it, as kube-rs's `Instrumented`:
    then the span is keyed by the wrapper and ended by its drop. (poll, the async body's
    name, the drop) for each."""
    rx = spec.poll or spec.match
    out = []
    for fn, name in named:
        if not is_drop(name):
            continue
        inner = _body_in(name, rx, spec)
        if inner is None:
            continue
        for poll in vtable_methods(info, fn.entry, 3):
            found = info.function_at(poll)
            if found is not None and found.entry == poll \
                    and demangled(found.name).endswith(FUTURE_POLL):
                out.append((found, inner, (fn, name)))
    return out


def _wrapper_polls(info: BinaryInfo, named: list[tuple[Function, str]],
                   spec: FunctionSpec) -> list[tuple[Function, str, tuple[Function, str]]]:
    """Async bodies inlined into a wrapper future's poll, found by name: a function
    `<W as core::future::future::Future>::poll` whose type W holds the body (a type path of
    its arguments is the body), with W's drop glue beside it. So kube-runtime's spawned
    reconcile, `Instrumented<IntoFuture<reconcile::{closure#0}>>`, in a tokio task: release
    builds inline the body and IntoFuture's poll into Instrumented's, which stays a function
    (tokio's task harness calls it), as does its Drop impl (tokio drops the future when it
    is Ready or the task is aborted). Of wrappers held in one another, the outermost: its polls
    are the future's, each once. (poll, the body's name, the drop) for each."""
    rx = spec.poll or spec.match
    drops = {dropped_type(name): (fn, name) for fn, name in named if is_drop(name)}
    # W's own Drop impl, where it has one (tracing's Instrumented has): every drop of a W
    # calls it, wherever the glue around it was inlined (tokio inlines the task's future's
    # glue into its stage's), so it is the end marker, self in RDI as the glue's.
    drops.update({name[1:-len(DROP_IMPL)]: (fn, name) for fn, name in named
                  if name.startswith("<") and name.endswith(DROP_IMPL)})
    found: dict[str, tuple[Function, str, tuple[Function, str]]] = {}
    for fn, name in named:
        if not (name.startswith("<") and name.endswith(FUTURE_POLL)):
            continue
        wrapper = name[1:-len(FUTURE_POLL)]
        if wrapper not in drops or rx.search(wrapper):
            continue  # no drop of its own, or the body itself (found by `match` already)
        inner = _held(wrapper, rx)
        if inner is not None and not (spec.exclude and spec.exclude.search(inner)):
            found[wrapper] = (fn, inner, drops[wrapper])
    outer = [found[w] for w in found if not any(w != other and w in other for other in found)]
    return outer or _legacy_wrapper_polls(info, named, spec, drops)


def _legacy_wrapper_polls(info: BinaryInfo, named: list[tuple[Function, str]],
                          spec: FunctionSpec, drops: dict[str, tuple[Function, str]]
                          ) -> list[tuple[Function, str, tuple[Function, str]]]:
    """The same with legacy names, which do not say which instance of a generic method a
    function is (`<tracing::instrument::Instrumented<T> as ..Future>::poll`, one per T, told
    apart by a hash only), while drop glues do name their type. W's poll is the instance
    called by the poll that runs W (a task's poll: tokio's raw poll) — the function that also
    calls the drop glue of a type holding W (tokio's Stage<W>, Cell<W, S>, its poll guard).
    Only an instance so confirmed is taken, never one by its name alone."""
    rx = spec.poll or spec.match
    out = []
    for wrapper, drop in drops.items():
        inner = _held(wrapper, rx)
        if inner is None or inner == wrapper or not wrapper.endswith(">"):
            continue
        base = wrapper[:wrapper.index("<")]
        generic = re.compile(rf"^<{re.escape(base)}<[^<>]*>{re.escape(FUTURE_POLL)}$")
        candidates = {fn.entry for fn, name in named if generic.match(name)}
        holders = {fn.entry for held, (fn, _name) in drops.items()
                   if held != wrapper and wrapper in held}
        # Legacy names print an impl's method as `crate::module::<impl Trait for Type>::m`.
        impl = re.compile(rf"^<{re.escape(base)}<[^<>]*>{re.escape(DROP_IMPL)}$|"
                          rf"<impl core::ops::drop::Drop for {re.escape(base)}<[^<>]*>>::drop$")
        if not candidates or not holders:
            continue
        confirmed = set()
        for fn, name in named:
            if name.endswith("::poll") and fn.entry not in candidates:
                calls = _direct_calls(info, fn)
                if calls & holders:
                    confirmed |= calls & candidates
        if len(confirmed) == 1:
            poll = info.function_at(confirmed.pop())
            # W's Drop impl, when its glue calls one (it ends the future wherever the glue
            # was inlined), else the glue.
            ends = [(f, n) for f, n in named if f.entry in _direct_calls(info, drop[0])
                    and impl.search(n)]
            out.append((poll, inner, ends[0] if len(ends) == 1 else drop))
    return out


MAX_CALL_SCAN = 1 << 16


def _direct_calls(info: BinaryInfo, fn: Function) -> set[int]:
    """The targets of the function's direct calls and jumps (its first 64 KB)."""
    code = read_function_code(info, fn)[:MAX_CALL_SCAN]
    targets = set()
    for _addr, _size, mnem, ops in iter_instructions(code, fn.entry):
        if mnem in ("call", "jmp"):
            try:
                targets.add(int(ops, 16))
            except ValueError:
                pass  # indirect
    return targets


def _held(wrapper: str, rx: re.Pattern[str]) -> str | None:
    """The body a wrapper type holds as its first type argument, through wrappers of wrappers
    (`Instrumented<IntoFuture<body>>`), or None. A type that only names the body among the
    arguments of a generic function (`Fuse<applier<Widget, .., reconcile::{closure#0}, ..>
    ::{closure#0}>`, kube-runtime's own future) does not hold it."""
    for _ in range(MAX_WRAPPERS):
        if rx.search(wrapper):
            return wrapper
        if not wrapper.endswith(">") or "<" not in wrapper:
            return None
        wrapper = _split_generics(wrapper[wrapper.index("<") + 1:-1])[0]
    return None


MAX_WRAPPERS = 8


def _split_generics(args: str) -> list[str]:
    """A generic argument list split at its top-level commas."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(args):
        if c in "<([":
            depth += 1
        elif c in ">)]":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(args[start:i].strip())
            start = i + 1
    out.append(args[start:].strip())
    return out


def _body_in(drop_name: str, rx: re.Pattern[str], spec: FunctionSpec) -> str | None:
    """The async body a drop is for: the body's own future, or one that holds it (GenFuture,
    an Instrumented-like wrapper), so a type path in the dropped type's arguments names it."""
    return next((path for path in re.split(r"[<>,\s]+", dropped_type(drop_name))
                 if rx.search(path) and not (spec.exclude and spec.exclude.search(path))), None)


def async_fn_name(poll_name: str) -> str:
    """`crate::reconcile::{{closure}}` is the body of `crate::reconcile`: name spans by it."""
    for suffix in CLOSURES:
        if poll_name.endswith(suffix):
            return poll_name[: -len(suffix)]
    return poll_name


def compile_async(info: BinaryInfo, spec: FunctionSpec, plan: Plan) -> list[str]:
    if spec.role == ROLE_END:
        raise UserError(f"{spec.match.pattern!r}: a rust-async function is a reconcile or a "
                        "step; its end marker is its `drop`")
    named = _names(info)
    polls = [(fn, name, _drop_for(named, spec, name)) for fn, name in _polls(named, spec)]
    if not polls and spec.poll is None:
        polls = _inlined_polls(info, named, spec)
    if not polls and spec.poll is None:
        polls = _wrapper_polls(info, named, spec)
    if not polls:
        drops = [name for _fn, name in named
                 if is_drop(name) and (spec.poll or spec.match).search(name)]
        hint = (f" (only its drop, {drops[0]}, is in the binary: its poll was inlined into an "
                "outer future's; name that one's poll and drop with `poll` and `drop`)"
                if drops else "")
        raise UserError(f"no poll function matches {(spec.poll or spec.match).pattern!r} in "
                        f"{info.name}{hint}")
    span = SPAN_STEP if spec.role == ROLE_STEP else SPAN_RECONCILE
    names = []
    for fn, poll_name, drop in polls:
        name = async_fn_name(poll_name)
        if spec.poll is not None and drop is not None:
            # An outer future's poll named in the probe: its spans are the body's, which the
            # drop's type names (`match`).
            name = async_fn_name(_body_in(drop[1], spec.match, spec) or poll_name)
        layout = FutureLayout.of(info, fn)
        drop_decoder = None
        if layout.state_offset is None and drop is not None and not _is_body(fn, spec):
            # A wrapper's poll that holds the inlined body: its state where the wrapper's
            # poll and drop agree on it (tracer.binary.async_state), read at the drop too.
            found = body_state(info, fn, drop[0], "rsi" if layout.self_in_rsi else "rdi",
                               lambda glue: is_drop(glue) and _held(dropped_type(glue),
                                                                    spec.match) is not None)
            if isinstance(found, BodyState):
                layout.state_offset, layout.state_source = found.offset, found.describe()
                drop_decoder = f"{RUST_DROP}:{found.offset}:1:{found.states}"
            else:
                layout.state_why = found
        state = "-:-" if layout.state_offset is None else \
            f"{layout.state_offset}:{layout.state_size}"
        exit_decoder = f"rust-poll-exit:{state}:{layout.result_bytes}:{layout.result_mode}"
        # `self` is RSI when the Poll is returned through memory (RDI its slot), else RDI.
        entry_decoder = f"rust-poll:{state}" if layout.self_in_rsi else f"rust-poll-rdi:{state}"
        if layout.self_source == "assumed":
            plan.notes.append(f"{name}: its poll's return was not seen to go through memory: "
                              "the future is taken from RSI (as for any Result of more than "
                              "16 bytes)")
        plan.points.append(_point(native_entry(info, fn), name, POLL, entry_decoder, span))
        rets = return_addresses(info, fn)
        if not rets:
            plan.notes.append(f"no RET found in {poll_name}: its polls cannot be timed")
        plan.points.extend(_point(addr, name, POLL_EXIT, exit_decoder, span) for addr in rets)
        if drop is not None:
            plan.points.append(_point(native_entry(info, drop[0]), name, DROP, drop_decoder,
                                      span))
        elif layout.state_offset is None and layout.result is None:
            raise UserError(
                f"{poll_name}: neither its future's state (no DWARF, no state dispatch found) "
                f"nor its drop ({DROP_PREFIX}..>) can be found, so no reconcile can be ended; "
                "name the drop with `drop = REGEX` in a probe file")
        if layout.result is not None:
            plan.rust_results[name] = layout.result
        if layout.request is not None:
            plan.rust_requests[name] = layout.request
        through = demangled(fn.name)
        via = "" if through == poll_name else f"polled through {through} (its body inlined), "
        plan.notes.append(f"{name}: async, {via}{layout.describe(info.has_dwarf)}"
                          + ("" if drop else "; no drop marker"))
        names.append(name)
    return list(dict.fromkeys(names))


def _is_body(fn: Function, spec: FunctionSpec) -> bool:
    """Whether the poll is the async body's own (not a wrapper's that inlined it)."""
    name = demangled(fn.name)
    return bool((spec.poll or spec.match).search(name)) or name.startswith(f"<{GEN_FUTURE}")


def _point(addr: int, name: str, role: str, decode: str | None, span: str) -> Point:
    return Point(addr, name, role, KEY_FUTURE, decode, span)


class FutureLayout:
    """Where a future keeps its state, and how its poll's result reads."""

    def __init__(self) -> None:
        self.state_offset: int | None = None
        self.state_size = 1
        self.state_source = "none"
        self.state_why: str | None = None  # why a wrapper's state was not taken
        self.result: dict | None = None
        self.result_bytes = 0
        self.result_mode = "r"
        self.request: dict | None = None  # how to read namespace/name at a first poll
        self.self_in_rsi = True  # poll(self, cx) -> Poll<..> through memory: RDI is the slot
        self.self_source = "assumed"

    def describe(self, dwarf: bool = True) -> str:
        where = ("state unknown: ended by its drop" if self.state_offset is None else
                 f"state at +{self.state_offset:#x} ({self.state_source})")
        if self.state_offset is None and self.state_why:
            where += f" (not read: {self.state_why})"
        said = "; result not readable"
        if not dwarf:
            said = ("; no DWARF: Ok/Err, the requeue, the error and the object are not read"
                    + ("; status completed, cancelled (dropped between polls: an aborted task) "
                       "or panic, from the state" if self.state_offset is not None else
                       "; status null: it ended, Ready or dropped between polls (an aborted "
                       "task), not told apart"))
        if self.result:
            said = "; Ok/Err read from DWARF; " + (
                "the requeue too (kube-runtime's Action); " if self.result.get("requeue")
                else "") + (
                "error message: the String returned" if self.result.get("messages") else
                "no error message (what the error's Display prints is not in the binary)")
        return (where + said
                + ("; object's namespace/name read at its first poll" if self.request else ""))

    @staticmethod
    def of(info: BinaryInfo, fn: Function) -> FutureLayout:
        layout = FutureLayout()
        if info.has_dwarf:
            from tracer.probes.rust_dwarf import poll_layout, request_layout

            layout.request = request_layout(info.path, fn.entry)
            found = poll_layout(info.path, fn.entry)
            if found is not None:
                state, result, return_size = found
                if return_size:
                    layout.self_in_rsi = return_size > MAX_REGISTER_RETURN
                    layout.self_source = "DWARF"
                if state is not None:
                    layout.state_offset, layout.state_size = state
                    layout.state_source = "DWARF"
                if result is not None:
                    layout.result = result
                    layout.result_bytes = min(result["read"], MAX_RESULT_BYTES)
                    layout.result_mode = "m" if return_size > MAX_REGISTER_RETURN else "r"
        if layout.self_source == "assumed" and returns_through_memory(info, fn):
            layout.self_source = "the poll's code"
        if layout.state_offset is None:
            offset = state_dispatch_offset(info, fn)
            if offset is not None:
                layout.state_offset, layout.state_source = offset, "the poll's dispatch"
        return layout


_MOV_ANY = re.compile(r"^(\w+|qword ptr \[[^\]]+\]), (\w+|qword ptr \[[^\]]+\])$")


def returns_through_memory(info: BinaryInfo, fn: Function) -> bool:
    """Whether the function returns its value through memory: the caller's slot comes in
    RDI and goes back in RAX, so rustc keeps RDI (in a register or a stack slot, through
    moves) and moves it to RAX before every RET. A linear sweep follows the moves (a write of
    anything else to a place drops it); every RET must have RAX = the slot just before."""
    insns = list(iter_instructions(read_function_code(info, fn)[:MAX_CALL_SCAN], fn.entry))
    holding = {"rdi"}
    rets = 0
    rax_is_slot = False
    for _addr, _size, mnem, ops in insns:
        if mnem in ("ret", "repz ret", "rep ret"):
            if not rax_is_slot:
                return False
            rets += 1
            continue
        move = _MOV_ANY.match(ops) if mnem == "mov" else None
        if move:
            dst, src = move.groups()
            if src in holding:
                holding.add(dst)
            else:
                holding.discard(dst)
            if dst == "rax":
                rax_is_slot = src in holding
        elif mnem not in ("cmp", "test", "push", "jmp", "nop") and not mnem.startswith("j"):
            written = ops.split(",")[0].strip()
            holding.discard(written)
            if mnem == "call" or written in ("rax", "eax", "al", "ax"):
                rax_is_slot = False
    return rets > 0


_MOVZX_BYTE = re.compile(r"^e?\w+, byte ptr \[(\w+) \+ (0x[0-9a-f]+|\d+)\]$")
_MOV_REG = re.compile(r"^(\w+), (\w+)$")


def state_dispatch_offset(info: BinaryInfo, fn: Function) -> int | None:
    """The offset of the state byte from the poll's own dispatch: rustc loads it from `self`
    (RSI, or a register it was copied to) with a byte-wide `movzx` and jumps through a table
    (or compares) right after. Only trusted in an async body (`{{closure}}`, or GenFuture's
    poll, whose only field is the body): an outer future's first byte load may be a field of
    its own."""
    name = demangled(fn.name)
    if not (name.endswith(CLOSURES) or name.startswith(f"<{GEN_FUTURE}")):
        return None
    self_regs = {"rsi"}
    for n, (_addr, _size, mnem, ops) in enumerate(
            iter_instructions(read_function_code(info, fn), fn.entry)):
        if n >= STATE_SCAN_INSNS or mnem in ("ret", "call", "jmp"):
            return None
        move = _MOV_REG.match(ops)
        if mnem == "mov" and move:
            dst, src = move.groups()
            if src in self_regs:
                self_regs.add(dst)
            else:
                self_regs.discard(dst)
            continue
        load = _MOVZX_BYTE.match(ops)
        if mnem == "movzx" and load and load.group(1) in self_regs:
            return int(load.group(2), 0)
    return None

