"""Pair raw hits into spans: one span per call, keyed by goroutine (Go) or thread (native).

Steps (probe role "step") become child spans of the reconcile open on the same key:
`parent` is the reconcile's span id, `depth` their nesting, `caller` the enclosing step when
nested. Ids are given at entry, so ids follow start order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tracer.probes import decoders
from tracer.probes.plan import (
    ENTRY,
    EXIT,
    KEY_FUTURE,
    KEY_THREAD,
    PANIC,
    RECOVERY,
    SPAN_END,
    SPAN_RECONCILE,
    SPAN_STEP,
    Plan,
    Point,
)

# Preemption re-runs an entry breakpoint 5 to 14 ms after the first hit (measured).
REHIT_WINDOW_NS = 100_000_000


@dataclass
class Hit:
    ts: int
    point: Point
    point_index: int
    lwp: int
    goid: int | None
    sp: int
    value: object


@dataclass
class OpenCall:
    function: str
    point_index: int
    start_ns: int
    sp: int
    thread: int
    goroutine: int | None
    value: object
    id: int = 0  # given at entry, so a step can name its reconcile before either ends
    span: str = SPAN_RECONCILE
    decode: str | None = None  # the entry point's decoder, to name `value`'s fields
    parent: int | None = None  # steps: the reconcile's span id
    caller: int | None = None  # steps nested in steps: the enclosing step's span id
    depth: int = 0  # steps: 1 when called (directly or not) by the reconcile, 2 inside a step
    panic: object = None
    recovered_ns: int | None = None


@dataclass
class KeyState:
    stack: list[OpenCall] = field(default_factory=list)
    last_exit: tuple[int, int] | None = None  # (point index, sp) of the last exit, no entry since


@dataclass
class PairingStats:
    hits: int = 0
    spans: int = 0
    duplicate_entries: int = 0
    duplicate_exits: int = 0
    orphan_exits: int = 0
    panics: int = 0
    steps: int = 0
    steps_outside: int = 0  # step calls with no reconcile open on their key: not recorded
    ended_by_marker: int = 0


class Pairer:
    """Feeds on hits in arrival order; calls `emit` with each finished span (a dict).

    Hits keyed by a Rust future go to the async pairer (tracer.session.async_pairing), which
    shares this pairer's ids, counters and `emit`: see `new_id`, `stats`, `in_flight`."""

    def __init__(self, plan: Plan, emit: Callable[[dict], None]) -> None:
        self.plan = plan
        self.emit = emit
        self.keys: dict[object, KeyState] = {}
        self.stats = PairingStats()
        # Calls open right now, per function: read by the live view from another thread, so
        # kept as counters rather than derived from the stacks it would have to walk.
        self.in_flight: dict[str, int] = {}
        self._next_id = 1
        self.async_pairer = None
        if any(p.key == KEY_FUTURE for p in plan.points):
            from tracer.session.async_pairing import AsyncPairer

            self.async_pairer = AsyncPairer(self)

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def key(self, hit: Hit) -> object:
        if hit.point.key == KEY_THREAD or hit.goid is None:
            return ("thread", hit.lwp)
        return hit.goid

    def feed(self, hit: Hit) -> None:
        if hit.point.key == KEY_FUTURE and self.async_pairer is not None:
            self.async_pairer.feed(hit)
            return
        self.stats.hits += 1
        state = self.keys.setdefault(self.key(hit), KeyState())
        role = hit.point.role
        if role == ENTRY and hit.point.span == SPAN_END:
            self._end_marker(state, hit)
        elif role == ENTRY:
            self._entry(state, hit)
        elif role == EXIT:
            self._exit(state, hit)
        elif role == PANIC:
            if state.stack:
                self.stats.panics += 1
            # Every open call on the goroutine is unwound unless one of them recovers (then
            # it returns normally and its RET clears the mark).
            for call in state.stack:
                if call.panic is None:
                    call.panic = hit.value or ["panic", None]
        elif role == RECOVERY:
            for call in state.stack:
                if call.panic is not None and call.recovered_ns is None:
                    call.recovered_ns = hit.ts

    def _entry(self, state: KeyState, hit: Hit) -> None:
        top = state.stack[-1] if state.stack else None
        # Go's asynchronous preemption re-executes the breakpoint: same call, same frame,
        # milliseconds later. A worker calling again from the same frame after a lost return
        # would look the same, hence the short window; native threads are not preempted so.
        if (top and hit.point.key != KEY_THREAD and top.point_index == hit.point_index
                and top.sp == hit.sp and top.panic is None
                and hit.ts - top.start_ns < REHIT_WINDOW_NS):
            self.stats.duplicate_entries += 1
            return
        # A call whose panic was recovered above it never returns: it ended at the recovery.
        while state.stack and state.stack[-1].recovered_ns is not None:
            call = state.stack.pop()
            self._closed(call)
            self._finish(call, call.recovered_ns, None, None)
        state.last_exit = None
        call = OpenCall(hit.point.function, hit.point_index, hit.ts, hit.sp, hit.lwp, hit.goid,
                        hit.value, span=hit.point.span, decode=hit.point.decode)
        if call.span == SPAN_STEP:
            # A step is a child of the innermost reconcile open on its goroutine or thread;
            # called outside any, it is not part of a reconcile's time and is not recorded.
            at = _innermost_reconcile(state.stack)
            if at is None:
                self.stats.steps_outside += 1
                return
            call.parent = state.stack[at].id
            steps_above = [c for c in state.stack[at + 1:] if c.span == SPAN_STEP]
            call.depth = len(steps_above) + 1
            call.caller = steps_above[-1].id if steps_above else None
        call.id = self.new_id()
        state.stack.append(call)
        self.in_flight[call.function] = self.in_flight.get(call.function, 0) + 1

    def _exit(self, state: KeyState, hit: Hit) -> None:
        if state.last_exit == (hit.point_index, hit.sp):
            self.stats.duplicate_exits += 1
            return
        # A RET runs with the stack pointer the call was entered with, unless the goroutine's
        # stack was moved meanwhile: match on it first, then on the function alone.
        i = next((i for i in range(len(state.stack) - 1, -1, -1)
                  if state.stack[i].function == hit.point.function
                  and state.stack[i].sp == hit.sp), None)
        if i is None:
            i = next((i for i in range(len(state.stack) - 1, -1, -1)
                      if state.stack[i].function == hit.point.function), None)
        if i is None:
            if hit.point.span != SPAN_STEP:  # a step's entry outside a reconcile was skipped
                self.stats.orphan_exits += 1
            return
        self._close_above(state, i, None)
        call = state.stack.pop(i)
        self._closed(call)
        state.last_exit = (hit.point_index, hit.sp)
        # Returned normally: any panic inside it was recovered inside it.
        call.panic = None
        self._finish(call, hit.ts, hit.value, hit.point.decode)

    def _end_marker(self, state: KeyState, hit: Hit) -> None:
        """An end marker ends the innermost reconcile open on its key, there and then."""
        at = _innermost_reconcile(state.stack)
        if at is None:
            return
        self._close_above(state, at, hit.ts)
        call = state.stack.pop(at)
        self._closed(call)
        self.stats.ended_by_marker += 1
        self._finish(call, hit.ts, None, None)

    def _close_above(self, state: KeyState, i: int, end_ns: int | None) -> None:
        """Calls above the i-th on the stack cannot outlive it: the ones whose panic was
        recovered ended at the recovery, the others' ends were lost (or are `end_ns`)."""
        while len(state.stack) > i + 1:
            call = state.stack.pop()
            self._closed(call)
            end = call.recovered_ns if call.recovered_ns is not None else end_ns
            if end is None:
                self.emit(self._span(call, None, None, None))
            else:
                self._finish(call, end, None, None)

    def close_all(self) -> list[dict]:
        """At the end of a run: recovered panics end at their recovery; calls still running
        are written as unfinished, never dropped."""
        unfinished = []
        for state in self.keys.values():
            for call in state.stack:
                self._closed(call)
                if call.recovered_ns is not None:
                    self._finish(call, call.recovered_ns, None, None)
                else:
                    unfinished.append(self._span(call, None, None, None))
            state.stack.clear()
        for span in unfinished:
            self.emit(span)
        if self.async_pairer is not None:
            unfinished.extend(self.async_pairer.close_all())
        return unfinished

    def _closed(self, call: OpenCall) -> None:
        self.in_flight[call.function] -= 1

    def _finish(self, call: OpenCall, end_ns: int, exit_value: object,
                exit_decode: str | None) -> None:
        self.stats.spans += 1
        if call.span == SPAN_STEP:
            self.stats.steps += 1
        self.emit(self._span(call, end_ns, exit_value, exit_decode))

    def _span(self, call: OpenCall, end_ns: int | None, exit_value: object,
              exit_decode: str | None) -> dict:
        span: dict = {
            "type": "span",
            "id": call.id or self.new_id(),
            "function": call.function,
            "start_ns": call.start_ns,
            "end_ns": end_ns,
            "duration_ns": None if end_ns is None else end_ns - call.start_ns,
        }
        if call.span == SPAN_STEP:
            span["parent"] = call.parent
            span["depth"] = call.depth
            if call.caller is not None:
                span["caller"] = call.caller
        if self.plan.language == "go":
            span["goroutine"] = call.goroutine
        span["thread"] = call.thread
        decode_span(span, self.plan.language, call.value, exit_value, call.panic,
                    call.decode, exit_decode)
        if end_ns is None:
            span["status"] = "unfinished"
        elif span.get("panic"):
            span["status"] = "panic"
        elif span.get("error"):
            span["status"] = "error"
        else:
            span["status"] = "ok"
        return span


def _innermost_reconcile(stack: list[OpenCall]) -> int | None:
    return next((i for i in range(len(stack) - 1, -1, -1)
                 if stack[i].span == SPAN_RECONCILE), None)


def _error(value: object) -> dict | None:
    """An error or panic as the trace keeps it: type, message (null unless the type's
    Error() is known to return it), and what else its type gives (reason and code of a
    Kubernetes API error; `fields` of a struct the tracer does not know)."""
    if not value or not isinstance(value, list):
        return None
    type_name, message, *rest = value
    error = {"type": type_name, "message": message}
    if rest and isinstance(rest[0], dict):
        error.update(rest[0])
    return error


def _request_from_key(key: object) -> dict | None:
    """A workqueue key, "namespace/name" or "name" for cluster-scoped objects."""
    if not isinstance(key, str):
        return None
    namespace, _, name = key.rpartition("/")
    return {"namespace": namespace, "name": name}


def decode_span(span: dict, language: str, entry: object, exit_value: object,
                panic: object, entry_decode: str | None = None,
                exit_decode: str | None = None) -> None:
    """Turn the agent's compact captures into the trace file's named fields; the decoders
    (tracer.probes.decoders) say what each capture holds."""
    if language == "go":
        entry_fields = decoders.named(entry_decode, entry)
        exit_fields = decoders.named(exit_decode, exit_value)
        span["request"] = None
        if "key" in entry_fields:
            span["key"] = entry_fields["key"]
            span["request"] = _request_from_key(entry_fields["key"])
        elif "duration" in entry_fields:
            span["last_interval_ns"] = entry_fields["duration"]
        elif "name" in entry_fields:
            span["request"] = {"namespace": entry_fields["namespace"],
                               "name": entry_fields["name"]}
        span["result"] = None
        if "requeue" in exit_fields:
            span["result"] = {"requeue": bool(exit_fields["requeue"]),
                              "requeue_after_ns": exit_fields["requeue_after_ns"]}
            if "priority" in exit_fields:
                span["result"]["priority"] = exit_fields["priority"]
        elif "duration" in exit_fields and isinstance(exit_fields["duration"], int):
            # A loop that returns when to run next (ArangoDB's inspectDeployment): the
            # same fact as a RequeueAfter.
            span["result"] = {"requeue": False, "requeue_after_ns": exit_fields["duration"]}
        span["error"] = _error(exit_fields.get("error"))
        span["panic"] = _error(panic)
    else:
        span["args"] = entry if isinstance(entry, list) else None
        span["return"] = exit_value
