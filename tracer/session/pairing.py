"""Pair raw hits into spans: one span per call, keyed by goroutine (Go) or thread (native)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tracer.probes.plan import ENTRY, EXIT, KEY_THREAD, PANIC, RECOVERY, Plan, Point

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


class Pairer:
    """Feeds on hits in arrival order; calls `emit` with each finished span (a dict)."""

    def __init__(self, plan: Plan, emit: Callable[[dict], None]) -> None:
        self.plan = plan
        self.emit = emit
        self.keys: dict[object, KeyState] = {}
        self.stats = PairingStats()
        # Calls open right now, per function: read by the live view from another thread, so
        # kept as counters rather than derived from the stacks it would have to walk.
        self.in_flight: dict[str, int] = {}
        self._next_id = 1

    def key(self, hit: Hit) -> object:
        if hit.point.key == KEY_THREAD or hit.goid is None:
            return ("thread", hit.lwp)
        return hit.goid

    def feed(self, hit: Hit) -> None:
        self.stats.hits += 1
        state = self.keys.setdefault(self.key(hit), KeyState())
        role = hit.point.role
        if role == ENTRY:
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
            self._finish(call, call.recovered_ns, None)
        state.last_exit = None
        state.stack.append(
            OpenCall(hit.point.function, hit.point_index, hit.ts, hit.sp, hit.lwp, hit.goid,
                     hit.value)
        )
        self.in_flight[hit.point.function] = self.in_flight.get(hit.point.function, 0) + 1

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
            self.stats.orphan_exits += 1
            return
        call = state.stack.pop(i)
        self._closed(call)
        state.last_exit = (hit.point_index, hit.sp)
        # Returned normally: any panic inside it was recovered inside it.
        call.panic = None
        self._finish(call, hit.ts, hit.value)

    def close_all(self) -> list[dict]:
        """At the end of a run: recovered panics end at their recovery; calls still running
        are written as unfinished, never dropped."""
        unfinished = []
        for state in self.keys.values():
            for call in state.stack:
                self._closed(call)
                if call.recovered_ns is not None:
                    self._finish(call, call.recovered_ns, None)
                else:
                    unfinished.append(self._span(call, None, None))
            state.stack.clear()
        for span in unfinished:
            self.emit(span)
        return unfinished

    def _closed(self, call: OpenCall) -> None:
        self.in_flight[call.function] -= 1

    def _finish(self, call: OpenCall, end_ns: int, exit_value: object) -> None:
        self.stats.spans += 1
        self.emit(self._span(call, end_ns, exit_value))

    def _span(self, call: OpenCall, end_ns: int | None, exit_value: object) -> dict:
        span: dict = {
            "type": "span",
            "id": self._next_id,
            "function": call.function,
            "start_ns": call.start_ns,
            "end_ns": end_ns,
            "duration_ns": None if end_ns is None else end_ns - call.start_ns,
        }
        self._next_id += 1
        if self.plan.language == "go":
            span["goroutine"] = call.goroutine
        span["thread"] = call.thread
        decode_span(span, self.plan.language, call.value, exit_value, call.panic)
        if end_ns is None:
            span["status"] = "unfinished"
        elif span.get("panic"):
            span["status"] = "panic"
        elif span.get("error"):
            span["status"] = "error"
        else:
            span["status"] = "ok"
        return span


def _error(value: object) -> dict | None:
    if not value:
        return None
    type_name, message = value  # type: ignore[misc]
    return {"type": type_name, "message": message}


def decode_span(span: dict, language: str, entry: object, exit_value: object,
                panic: object) -> None:
    """Turn the agent's compact captures into the trace file's named fields."""
    if language == "go":
        if isinstance(entry, list):
            span["request"] = {"namespace": entry[0], "name": entry[1]}
        else:
            span["request"] = None
        if isinstance(exit_value, list):
            requeue, after, error = exit_value
            span["result"] = {"requeue": bool(requeue), "requeue_after_ns": after}
            span["error"] = _error(error)
        else:
            span["result"] = None
            span["error"] = None
        span["panic"] = _error(panic)
    else:
        span["args"] = entry if isinstance(entry, list) else None
        span["return"] = exit_value
