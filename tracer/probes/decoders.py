"""The contract between probes and backends: which decoders exist, which registers each one
reads, and the shape of the value it captures. Written once here; gdb's hit handler, the Delve
client and the uprobe reader all derive from it (`decode`, `fetchargs`, `from_fetched`), and
the pairer names the values by it (`named`).

A backend's hit line: [ts_ns, point, lwp, goid, sp, value, handler_ns]
  ts_ns       CLOCK_MONOTONIC of the hit
  point       index into the plan's points
  lwp         the OS thread
  goid        goroutine id (Go), the future's address (key "future": Rust async), or null
  sp          stack pointer, pairs an entry with its return
  value       what the point's decoder captured (below), or null
  handler_ns  the tracer's own time in the stop (0 where nothing stops)
Control lines are JSON objects: {"marker": n}, {"agent_error": "...", "point": i}.

Registers are those of Go's register ABI (amd64: integer arguments and results in RAX, RBX,
RCX, RDI, RSI, R8, R9, R10, R11, in order, a struct's fields flattened) after the prologue or
at a RET, and System V's for native code. A Go error is an interface: (itab, data); a panic's
value an empty interface: (type, data). Standard library only: gdb's hit handler imports this
module inside gdb's own Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tracer.binary.gotypes import KIND_INT32, KIND_STRING
from tracer.binary.govalues import MAX_MESSAGE, MAX_NAME, GoMemory

STRING = "string"  # (pointer, length) registers
STRING_IN = "string-in"  # a string field at `offset` in the struct a register points at
BOOL = "bool"  # the low byte of a register
INT = "int"  # a signed 64-bit register
INT_PTR = "int-ptr"  # a *int in a register: the int, or None for nil
ERROR = "error"  # (itab, data): [type, message, extra] or None
PANIC_VALUE = "eface"  # (type, data) of an empty interface: as an error

ENTRY = "entry"
EXIT = "exit"


@dataclass(frozen=True)
class Field:
    name: str  # the value's name in the trace (see `named`)
    kind: str
    regs: tuple[str, ...]
    offset: int = 0  # STRING_IN: where the string header is in the pointed-at struct


@dataclass(frozen=True)
class Decoder:
    name: str
    language: str  # "go" | "native"
    at: str  # ENTRY: after the prologue; EXIT: at a RET
    fields: tuple[Field, ...]
    summary: str
    single: bool = False  # the value is the one field itself, not a list
    names_only: bool = False  # only names: nothing is read while capture is off
    probe_file: bool = True  # a probe file may name it (go-panic is the tracer's own)


def _f(name: str, kind: str, *regs: str) -> Field:
    return Field(name, kind, regs)


_REQUEST = (_f("namespace", STRING, "rdi", "rsi"), _f("name", STRING, "r8", "r9"))
# A Kubernetes object: TypeMeta (two strings, 32 bytes), then ObjectMeta {Name, GenerateName,
# Namespace, ...}; tracer.probes.layouts checks each object type has this layout.
OBJECT_NAME_AT = 32
OBJECT_NAMESPACE_AT = 64

DECODERS: dict[str, Decoder] = {d.name: d for d in (
    # func (r *R) Reconcile(ctx, req reconcile.Request): receiver RAX, ctx RBX/RCX, then
    # req.NamespacedName's two strings.
    Decoder("cr-request", "go", ENTRY, _REQUEST,
            "controller-runtime's reconcile.Request after receiver and ctx", names_only=True),
    # func (r *R) Reconcile(ctx, obj *MyKind): an ObjectReconciler (reconcile.AsReconciler):
    # the object pointer after receiver and ctx, its namespace and name from its metadata.
    Decoder("cr-object", "go", ENTRY,
            (Field("namespace", STRING_IN, ("rdi",), OBJECT_NAMESPACE_AT),
             Field("name", STRING_IN, ("rdi",), OBJECT_NAME_AT)),
            "controller-runtime's ObjectReconciler: the object's namespace and name",
            names_only=True, probe_file=False),
    # (reconcile.Result, error) with Result {Requeue bool; RequeueAfter time.Duration}:
    # controller-runtime before v0.23.
    Decoder("cr-result", "go", EXIT,
            (_f("requeue", BOOL, "rax"), _f("requeue_after_ns", INT, "rbx"),
             _f("error", ERROR, "rcx", "rdi")),
            "controller-runtime's (Result, error), Result {Requeue, RequeueAfter}"),
    # v0.23 added Priority *int: the error moves to RDI/RSI.
    Decoder("cr-result-priority", "go", EXIT,
            (_f("requeue", BOOL, "rax"), _f("requeue_after_ns", INT, "rbx"),
             _f("error", ERROR, "rdi", "rsi"), _f("priority", INT_PTR, "rcx")),
            "controller-runtime's (Result, error), Result {Requeue, RequeueAfter, Priority}"),
    # A workqueue key string after the receiver, or after receiver and ctx.
    Decoder("go-key", "go", ENTRY, (_f("key", STRING, "rbx", "rcx"),),
            "a key string after the receiver", single=True, names_only=True),
    Decoder("go-key-ctx", "go", ENTRY, (_f("key", STRING, "rdi", "rsi"),),
            "a key string after the receiver and ctx", single=True, names_only=True),
    Decoder("go-error", "go", EXIT, (_f("error", ERROR, "rax", "rbx"),),
            "a lone error result", single=True),
    # Two strings after the receiver, (r, namespace, name string): kube-controller-manager's
    # pvcprotection processPVC.
    Decoder("go-namespace-name", "go", ENTRY,
            (_f("namespace", STRING, "rbx", "rcx"), _f("name", STRING, "rdi", "rsi")),
            "namespace and name strings after the receiver", names_only=True),
    # (x, error) with x one register (bool, pointer, int): the error after it, x not read.
    # kube-controller-manager's syncJob (bool, error), reconcileKey (bool, error), cronjob
    # v2's sync (*time.Duration, error).
    Decoder("go-second-error", "go", EXIT, (_f("error", ERROR, "rbx", "rcx"),),
            "an error after a one-register result: (bool, error), (*T, error)", single=True),
    Decoder("go-duration", "go", EXIT, (_f("duration", INT, "rax"),),
            "a time.Duration result", single=True),
    Decoder("go-duration-arg", "go", ENTRY, (_f("duration", INT, "rbx"),),
            "a time.Duration argument after the receiver", single=True),
    # runtime.gopanic(e any): the tracer's own, to end a call that panicked.
    Decoder("go-panic", "go", ENTRY, (_f("panic", PANIC_VALUE, "rax", "rbx"),),
            "runtime.gopanic's value", single=True, probe_file=False),
    Decoder("native-args", "native", ENTRY,
            (_f("a0", INT, "rdi"), _f("a1", INT, "rsi")),
            "the first two integer arguments", names_only=True),
    Decoder("native-return", "native", EXIT, (_f("return", INT, "rax"),),
            "the integer return value", single=True),
)}

# What a probe file's entry/exit may name, by language (rust-async decoders belong to
# tracer.probes.rust_async, which checks its own).
ENTRY_DECODERS = {lang: tuple(d.name for d in DECODERS.values() if d.language == lang
                              and d.at == ENTRY and d.probe_file) for lang in ("go", "native")}
EXIT_DECODERS = {lang: tuple(d.name for d in DECODERS.values() if d.language == lang
                             and d.at == EXIT and d.probe_file
                             and d.name != "cr-result-priority") for lang in ("go", "native")}
# "cr-result" in a probe file means controller-runtime's result as the binary lays it out:
# tracer.probes.layouts picks the concrete decoder per function.
RESULT_DECODERS = ("cr-result", "cr-result-priority")

Reg = Callable[[str], int]


def signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _read(field: Field, reg: Reg, mem: GoMemory):
    kind = field.kind
    if kind == STRING:
        limit = MAX_MESSAGE if field.name == "message" else MAX_NAME
        return mem.string(reg(field.regs[0]), reg(field.regs[1]), limit)
    if kind == STRING_IN:
        base = reg(field.regs[0])
        if not base:
            return None
        header = base + field.offset
        return mem.string(mem.u64(header), mem.u64(header + 8), MAX_NAME)
    if kind == BOOL:
        return reg(field.regs[0]) & 0xFF != 0
    if kind == INT:
        return signed(reg(field.regs[0]))
    if kind == INT_PTR:
        ptr = reg(field.regs[0])
        return signed(mem.u64(ptr)) if ptr else None
    word, data = reg(field.regs[0]), reg(field.regs[1])
    if not word:
        return None
    try:
        if kind == ERROR:
            return mem.iface_error(word, data)
        return mem.error_value(word, data)
    except Exception:  # noqa: BLE001 - any failure to read it
        # There is an error (or panic) all the same: never recorded as none.
        return [unreadable(word, kind), None, None]


def unreadable(word: int, kind: str) -> str:
    """The type name given to an error whose type could not be read."""
    return f"{'itab' if kind == ERROR else 'type'} 0x{word:x} (unreadable)"


def decode(name: str | None, reg: Reg, mem: GoMemory):
    """The value of decoder `name` at a hit: `reg(register) -> int` reads the stopped
    thread's registers (unsigned), `mem` its memory."""
    decoder = DECODERS.get(name or "")
    if decoder is None:
        return None
    if decoder.names_only and not mem.capture_args:
        return None
    values = [_read(f, reg, mem) for f in decoder.fields]
    return values[0] if decoder.single else values


def named(name: str | None, value) -> dict:
    """{field name: value} of a captured value ({} when nothing was captured)."""
    decoder = DECODERS.get(name or "")
    if decoder is None or value is None:
        return {}
    if decoder.single:
        return {decoder.fields[0].name: value}
    if not isinstance(value, list):
        return {}
    return {f.name: v for f, v in zip(decoder.fields, value, strict=False)}


# -- kernel uprobes: the same fields as fetch-args -------------------------------------------
STRING_BYTES = 256  # a string's bytes as one u64[32] (gdb's hit handler reads up to 1,024)
# Where uprobes read an error's fields, as (offset in the pointed-to value, kind): where the
# known error types of this binary hold their message and extra fields (errors.errorString.s
# and fmt.wrapError.msg at 0; StatusError's ErrStatus.Message, .Reason, .Code wherever this
# apimachinery puts them), read from the binary's own type descriptors at compile time
# (tracer.probes.layouts.error_slots). The kernel cannot choose by type, so it reads every
# slot; the reader keeps one only where the error's type descriptor puts that field exactly
# there.
ErrorSlots = tuple[tuple[int, str], ...]
STD_ERROR_SLOTS: ErrorSlots = ((0, STRING),)
SLOT_KINDS = {KIND_STRING: STRING, KIND_INT32: "s32"}  # Go kind -> fetch-arg type


def _tracefs_reg(reg: str) -> str:
    return "%" + (reg[1:] if reg[0] == "r" and not reg[1].isdigit() else reg)


def fetchargs(name: str | None, slots: ErrorSlots = STD_ERROR_SLOTS) -> list[str]:
    """The decoder's fields as uprobe fetch-args (tracefs syntax). Each string is one array
    behind one pointer chain: a nil pointer then faults once, not once per byte."""
    decoder = DECODERS.get(name or "")
    if decoder is None:
        return []
    args: list[str] = []
    for i, field in enumerate(decoder.fields):
        n = f"f{i}"
        regs = [_tracefs_reg(r) for r in field.regs]
        if field.kind == STRING:
            args += [f"{n}l={regs[1]}:s64", f"{n}=+0({regs[0]}):u64[{STRING_BYTES // 8}]"]
        elif field.kind == STRING_IN:
            at = field.offset
            args += [f"{n}l=+{at + 8}({regs[0]}):s64",
                     f"{n}=+0(+{at}({regs[0]})):u64[{STRING_BYTES // 8}]"]
        elif field.kind == BOOL:
            args.append(f"{n}={regs[0]}:u8")
        elif field.kind == INT:
            args.append(f"{n}={regs[0]}:s64")
        elif field.kind == INT_PTR:
            args += [f"{n}p={regs[0]}:u64", f"{n}=+0({regs[0]}):s64"]
        else:
            args.append(f"{n}t={regs[0]}:u64")
            for k, (off, kind) in enumerate(slots):
                if kind == STRING:
                    args += [f"{n}s{k}l=+{off + 8}({regs[1]}):s64",
                             f"{n}s{k}=+0(+{off}({regs[1]})):u64[{STRING_BYTES // 8}]"]
                else:
                    args.append(f"{n}s{k}=+{off}({regs[1]}):{kind}")
    return args


def _text(data: bytes, length: int) -> str | None:
    if length < 0:
        return None
    return data[:length].decode("utf-8", "replace")


def from_fetched(name: str | None, f: dict, mem: GoMemory, capture: bool,
                 type_of: Callable[[int, str], int | None],
                 slots: ErrorSlots = STD_ERROR_SLOTS):
    """The decoder's value from one uprobe record's fields (`fetchargs`' names).
    `type_of(word, kind)` gives the concrete type of an error's first word (an itab's type,
    or the word itself for a panic), or None when it can no longer be read."""
    decoder = DECODERS.get(name or "")
    if decoder is None:
        return None
    if decoder.names_only and not capture:
        return None
    values = []
    for i, field in enumerate(decoder.fields):
        n = f"f{i}"
        if field.kind in (STRING, STRING_IN):
            values.append(_text(f[n], f[n + "l"]))
        elif field.kind in (BOOL, INT):
            values.append(f[n] != 0 if field.kind == BOOL else f[n])
        elif field.kind == INT_PTR:
            values.append(f[n] if f[n + "p"] else None)
        else:
            values.append(_fetched_error(field, f, n, mem, capture, type_of, slots))
    return values[0] if decoder.single else values


def _fetched_error(field: Field, f: dict, n: str, mem: GoMemory, capture: bool,
                   type_of: Callable[[int, str], int | None],
                   slots: ErrorSlots) -> list | None:
    word = f[n + "t"]
    if not word:
        return None
    type_addr = type_of(word, field.kind)
    try:
        if type_addr is None:
            raise ValueError("gone")
        layout = mem.error_layout(type_addr)
    except Exception:  # noqa: BLE001 - the operator has exited (its last hits are read
        # after it), or the type cannot be read: an error all the same, of unknown type.
        return [unreadable(word, field.kind), None, None]
    if not capture:
        return [layout.name, layout.constant, None]
    fetched = {}
    for k, (off, kind) in enumerate(slots):
        fetched[off] = (_text(f[f"{n}s{k}"], f[f"{n}s{k}l"]) if kind == STRING
                        else f[f"{n}s{k}"])

    def slot(where: tuple[int, int]):
        off, kind = where
        expected = SLOT_KINDS.get(kind)
        return fetched.get(off) if dict(slots).get(off) == expected else None

    message = layout.constant
    if layout.message is not None:
        message = slot(layout.message)
    extra = {k: slot(v) for k, v in layout.extra.items()} or None
    # Fields of types the tracer does not know are read by the debuggers, not the kernel.
    return [layout.name, message, extra]


# -- Rust futures (probe kind "rust-async"): the poll decoders -------------------------------
# Named by tracer.probes.rust_async per poll function, read by gdb's hit handler and, as
# fetch-args, by kernel uprobes:
#   rust-poll:OFF:SIZE       a poll's entry, `self` in RSI (the Poll returned through memory,
#                            RDI its slot); OFF:SIZE the future's state, "-:-" when unknown
#   rust-poll-rdi:OFF:SIZE   the same with `self` in RDI (the Poll fits in RAX:RDX)
#   rust-poll-exit:OFF:SIZE:N:MODE  a poll's RET: the returned Poll's first N bytes, through
#                            RAX (MODE m: RAX points at it) or in RAX:RDX (MODE r)
#   rust-drop:OFF:SIZE:N     a drop, `self` in RDI: the state of the body a wrapper future
#                            holds, where its poll and drop agree on it
#                            (tracer.binary.async_state); N states: 0, 1, 2, 3..N-1
# A drop with no decoder reads nothing but its `self`.
# The values (the hit line's `value`, the same from every backend):
#   entry: the state, or [state, namespace, name] at a first poll (state 0) whose object the
#          layout says how to read (tracer.probes.rust_dwarf.request_layout), or None
#   exit:  [state after or None, the returned Poll's first N bytes (hex) or None, message]
#   drop:  the state (rust-drop), else None
# The future's address is the hit's key (`goid`). A uprobe at a RET has lost `self` (and so
# the state after the poll): its hit has no future, and tracer.session.async_pairing pairs it
# with its thread's innermost open poll; the Poll's bytes then say Ready or Pending.
RUST_POLL = "rust-poll"
RUST_DROP = "rust-drop"
# rustc's coroutine states (tracer.binary.async_state checks them on the binary).
STATE_UNRESUMED, STATE_RETURNED, STATE_PANICKED, STATE_FIRST_SUSPENDED = 0, 1, 2, 3


@dataclass(frozen=True)
class RustPoll:
    exit: bool
    self_reg: str  # where `self` is at entry: "rsi" or "rdi"
    state_offset: int | None
    state_size: int | None
    result_bytes: int = 0  # exit: bytes of the returned Poll to read (0: not decoded)
    mode: str = "r"  # exit: "m" RAX points at the Poll, "r" the Poll is RAX:RDX
    drop: bool = False  # rust-drop: the state at the future's drop
    states: int | None = None  # rust-drop: how many states the body has


def rust_poll(decoder: str | None) -> RustPoll | None:
    """The parsed rust-poll or rust-drop decoder, or None for any other name."""
    if not decoder or not decoder.startswith((RUST_POLL, RUST_DROP)):
        return None
    kind, *parts = decoder.split(":")
    if kind == RUST_DROP:
        offset, size, states = (int(p) for p in (parts + ["0", "1", "0"][len(parts):])[:3])
        return RustPoll(False, "rdi", offset, size, drop=True, states=states)
    parts += ["-", "-", "0", "r"][len(parts):]
    offset = None if parts[0] == "-" else int(parts[0])
    size = None if parts[1] == "-" else int(parts[1])
    if kind == "rust-poll-exit":
        return RustPoll(True, "rsi", offset, size, int(parts[2]), parts[3])
    return RustPoll(False, "rdi" if kind == "rust-poll-rdi" else "rsi", offset, size)


_SIZES = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}


def _chain(base: str, steps: list) -> tuple[str, int, list]:
    """A request_layout path as a fetch-arg base: (expression, offset, the string step)."""
    expr, off = base, 0
    for step in steps:
        if step[0] == "o":
            off += step[1]
        elif step[0] == "d":
            expr, off = f"+{off}({expr})", 0
        else:
            return expr, off, step
    raise ValueError("a request path without its string")


def rust_fetchargs(decoder: str | None, role: str, request: dict | None = None,
                   result: dict | None = None, self_reg: str | None = None) -> list[str]:
    """A Rust future point's fetch-args: `fut` the future (entry: `self`; drop: RDI), `st`
    its state at entry where the layout is known, the object's strings (`rqN`: data, `rqNl`
    length, `rqNo` the Option's tag) at every entry (kept only at a first poll), and at a
    RET the returned Poll's bytes (`res`) and an error's message (`msg`, `msgl`) where the
    layout (DWARF) says how to read them. `self_reg` puts `self` elsewhere (the calibration's
    buffer)."""
    if role == "drop":
        me = _tracefs_reg(self_reg or "rdi")
        drop = rust_poll(decoder)
        if drop is None or not drop.drop or drop.state_offset is None:
            return [f"fut={me}:u64"]
        return [f"fut={me}:u64",
                f"st=+{drop.state_offset}({me}):{_SIZES.get(drop.state_size or 1, 'u8')}"]
    spec = rust_poll(decoder)
    if spec is None:
        return []
    if spec.exit:
        if not spec.result_bytes:
            return []
        if spec.mode == "r":
            return ["res0=%ax:u64", "res1=%dx:u64"]
        args = [f"res=+0(%ax):u64[{(spec.result_bytes + 7) // 8}]"]
        where = (result or {}).get("messages", {}).get("")
        if where is not None:
            args += [f"msgl=+{where[1]}(%ax):s64",
                     f"msg=+0(+{where[0]}(%ax)):u64[{STRING_BYTES // 8}]"]
        return args
    me = _tracefs_reg(self_reg or spec.self_reg)
    args = [f"fut={me}:u64"]
    if spec.state_offset is not None:
        args.append(f"st=+{spec.state_offset}({me}):{_SIZES.get(spec.state_size or 1, 'u8')}")
    for i, key in enumerate(("namespace", "name")):
        if not request or key not in request:
            continue
        expr, off, (_s, ptr, length, option) = _chain(me, request[key])
        n = f"rq{i}"
        if option is not None:
            args.append(f"{n}o=+{off + option['off']}({expr}):"
                        f"{_SIZES.get(option['size'], 'u64')}")
        args += [f"{n}l=+{off + length}({expr}):s64",
                 f"{n}=+0(+{off + ptr}({expr})):u64[{STRING_BYTES // 8}]"]
    return args


def rust_from_fetched(decoder: str | None, role: str, f: dict, capture: bool,
                      request: dict | None = None, result: dict | None = None
                      ) -> tuple[int | None, object]:
    """(the future, the value as gdb's hit handler gives it) from one uprobe record's fields
    (`rust_fetchargs`' names). At a RET the future is None (see above)."""
    if role == "drop":
        return f.get("fut"), f.get("st")
    spec = rust_poll(decoder)
    if spec is None:
        return f.get("fut"), None
    if spec.exit:
        raw = None
        if spec.result_bytes:
            data = (f["res0"].to_bytes(8, "little") + f["res1"].to_bytes(8, "little")
                    if spec.mode == "r" else f["res"])
            raw = data[:spec.result_bytes]
        message = None
        if raw is not None and "msg" in f and capture and result:
            message = _rust_message(result, raw, f)
        return None, [None, None if raw is None else raw.hex(), message]
    state = f.get("st")
    if state == 0 and request and capture and "rq1" in f:
        names = []
        for i in range(2):
            n = f"rq{i}"
            option = request[("namespace", "name")[i]][-1][3]
            tag = f.get(n + "o")
            some = option is None or option["values"].get(str(tag), option["default"]) == "Some"
            names.append(_text(f[n], f[n + "l"]) if some else None)
        return f["fut"], [state, *names]
    return f["fut"], state


def drop_state(decoder: str | None, read: Callable[[int, int], bytes], future: int | None
               ) -> int | None:
    """The state a rust-drop decoder reads at a drop (gdb's hit handler: `read(addr, size)`
    the operator's memory); None for a drop without one."""
    spec = rust_poll(decoder)
    if spec is None or not spec.drop or spec.state_offset is None or not future:
        return None
    return int.from_bytes(read(future + spec.state_offset, spec.state_size or 1), "little")


def ended_by_state(decoder: str | None, state: int | None) -> str | None:
    """What a future's state at its drop says of it, by rustc's coroutine states as the
    binary was checked to use them (tracer.binary.async_state): "completed" (Returned),
    "panic" (Panicked), "cancelled" (Unresumed or suspended at an await: dropped before it
    completed), or None (no state, or a value the body does not have)."""
    spec = rust_poll(decoder)
    if spec is None or not spec.drop or state is None or spec.states is None:
        return None
    if state == STATE_RETURNED:
        return "completed"
    if state == STATE_PANICKED:
        return "panic"
    if state == STATE_UNRESUMED or STATE_FIRST_SUSPENDED <= state < spec.states:
        return "cancelled"
    return None


def rust_variant(enum: dict, data: bytes) -> str | None:
    """The variant an enum layout (tracer.probes.rust_dwarf) reads in `data`."""
    raw = data[enum["off"]:enum["off"] + enum["size"]]
    if len(raw) < enum["size"]:
        return None
    return enum["values"].get(str(int.from_bytes(raw, "little")), enum["default"])


def _rust_message(layout: dict, data: bytes, f: dict) -> str | None:
    """A Ready(Err(e)) whose e is a String: the message fetched (gdb reads the same)."""
    if rust_variant(layout["poll"], data) != layout["ready"] \
            or rust_variant(layout["result"], data) != "Err":
        return None
    return _text(f["msg"], min(f["msgl"], MAX_MESSAGE, STRING_BYTES))
