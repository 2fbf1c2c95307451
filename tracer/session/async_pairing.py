"""Pair the hits of Rust futures into spans: one per future, from its first poll to the poll
that completes it (or its drop), keyed by the future's address.

A future is polled several times, often on different threads, so spans are keyed by the
future, not the thread: each poll's entry carries its future (`self`) and each drop its
(RDI). A poll's return is paired with its thread's innermost open poll of that function:
polls nest on a thread (a wrapper's poll holds the inner one, a reconcile's poll may hold
another traced future's) and a thread runs one at a time, so its open polls are a stack.
gdb's agent also names the future at a RET (it keeps the same stack); kernel uprobes cannot
(the RET has lost `self`), so the stack here is the one that counts. A future's address is
reused once its task ends, so a Ready or a drop closes it: the next poll there is a new one.
The state byte read at entry says what a poll was: entered in state 0 (Unresumed) it starts
a reconcile; left in state 1 (Returned) it finished it (gdb reads the state after a poll;
uprobes cannot, and the returned Poll's Ready says it). When neither the state nor the Poll
can be read, the first poll of an address not open starts a span and the drop ends it, at
the end of its last poll. Span fields beyond the usual: `future` (hex),
`polls`, `cpu_ns` (time inside polls), `await_ns` (between them; cpu_ns + await_ns =
duration_ns), `threads` (the thread of each poll, in order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.probes.decoders import ended_by_state, rust_poll
from tracer.probes.plan import DROP, POLL, POLL_EXIT, SPAN_STEP

UNRESUMED, RETURNED, PANICKED = 0, 1, 2
MAX_NESTED = 16  # open polls kept per thread


@dataclass
class OpenFuture:
    id: int
    function: str
    span: str
    future: int
    start_ns: int
    threads: list[int] = field(default_factory=list)
    polls: int = 0
    cpu_ns: int = 0
    poll_start: int | None = None
    last_exit_ns: int | None = None
    outcome: tuple | None = None  # (ok, error type, message) once a poll returned Ready
    state_known: bool = False  # the agent reads the state byte: the drop is not the end
    end_known: bool = False  # a poll's return tells Ready (state after, or the Poll's bytes)
    request: dict | None = None  # the object (namespace, name), read at the first poll
    untold: bool = False  # how it ended is not known for sure: status null


class AsyncPairer:
    """Shares the synchronous pairer's ids, counters and `emit` (see Pairer)."""

    def __init__(self, pairer) -> None:
        self.pairer = pairer
        self.results = pairer.plan.rust_results
        self.open: dict[int, OpenFuture] = {}
        # Per thread, the polls entered and not yet returned, innermost last:
        # (future, function). Bounded: a poll that unwound (a panic) never returns.
        self.polling: dict[int, list[tuple[int, str]]] = {}

    def feed(self, hit) -> None:
        stats = self.pairer.stats
        stats.hits += 1
        future = hit.goid
        role = hit.point.role
        if role == POLL_EXIT:
            future = self._returned(hit, future)
        if future is None:
            stats.orphan_exits += 1
            return
        if role == POLL:
            stack = self.polling.setdefault(hit.lwp, [])
            stack.append((future, hit.point.function))
            del stack[:-MAX_NESTED]
            self._poll(hit, future)
        elif role == POLL_EXIT:
            self._poll_exit(hit, future)
        elif role == DROP:
            self._unwound(future)
            self._drop(hit, future)

    def _returned(self, hit, named: int | None) -> int | None:
        """The future a poll's return belongs to: its thread's innermost open poll of the
        same function (the one the backend named, when it named one)."""
        stack = self.polling.get(hit.lwp)
        if not stack:
            return named
        function = hit.point.function
        for i in range(len(stack) - 1, -1, -1):
            future, polled = stack[i]
            if polled == function and (named is None or named == future):
                # Polls above it on this thread unwound without returning (a panic caught
                # inside this poll): they are gone too.
                del stack[i:]
                return future
        return named

    def _unwound(self, future: int) -> None:
        """A dropped future is polled nowhere: a poll of it still on a thread's stack unwound
        (a panic) and never returned."""
        for stack in self.polling.values():
            if any(f == future for f, _ in stack):
                stack[:] = [(f, fn) for f, fn in stack if f != future]

    def _poll(self, hit, future: int) -> None:
        value = hit.value
        request = None
        if isinstance(value, list):  # a first poll that read the object: [state, ns, name]
            value, request = value[0], {"namespace": value[1], "name": value[2]}
        state = value if isinstance(value, int) else None
        call = self.open.get(future)
        if call is not None and state == UNRESUMED:
            # A new future at the address of one whose end was not seen (its drop missed):
            # how that one ended is not known.
            call.untold = True
            self._end(self.open.pop(future), call.last_exit_ns)
            call = None
        if call is None:
            if state is not None and state != UNRESUMED:
                # Already running when the tracer came: its start is not known.
                self.pairer.stats.orphan_exits += 1
                return
            call = OpenFuture(self.pairer.new_id(), hit.point.function, hit.point.span,
                              future, hit.ts, request=request)
            self.open[future] = call
            flight = self.pairer.in_flight
            flight[call.function] = flight.get(call.function, 0) + 1
        call.polls += 1
        call.state_known = state is not None
        call.threads.append(hit.lwp)
        call.poll_start = hit.ts

    def _poll_exit(self, hit, future: int) -> None:
        call = self.open.get(future)
        if call is None or call.poll_start is None:
            self.pairer.stats.orphan_exits += 1
            return
        call.cpu_ns += hit.ts - call.poll_start
        call.poll_start = None
        call.last_exit_ns = hit.ts
        # [state after, the returned Poll's first bytes (hex), the error's message]
        state, raw, message = (hit.value + [None] * 3)[:3] if isinstance(hit.value, list) \
            else (None, None, None)
        ready, outcome = self._read(call.function, raw, message)
        if outcome is not None:
            call.outcome = outcome
        call.end_known = state is not None or ready is not None
        if state == RETURNED or (state is None and ready):
            del self.open[future]
            self._end(call, hit.ts)
        elif state == PANICKED:
            del self.open[future]
            call.outcome = ("panic", None, None)
            self._end(call, hit.ts)

    def _drop(self, hit, future: int) -> None:
        call = self.open.pop(future, None)
        if call is None:
            return  # it finished at its last poll, as futures do
        self.pairer.stats.ended_by_marker += 1
        between = call.poll_start is None and call.last_exit_ns is not None
        spec = rust_poll(hit.point.decode)
        if spec is not None and spec.drop:
            # The drop reads the state (a wrapper's inlined body, tracer.binary.async_state):
            # Returned after its last poll: completed there; Unresumed or suspended between
            # polls: cancelled (an aborted task); Panicked inside a poll that never returned:
            # panic. Anything else (no value, or the polls seen say otherwise): not told.
            said = ended_by_state(hit.point.decode, hit.value if isinstance(hit.value, int)
                                  else None)
            if said == "completed" and between:
                self._end(call, call.last_exit_ns)
            elif said == "cancelled" and between:
                call.outcome = ("cancelled", None, None)
                self._end(call, hit.ts)
            elif said == "panic" and call.poll_start is not None:
                call.outcome = ("panic", None, None)
                self._end(call, hit.ts)
            else:
                call.untold = True
                self._end(call, call.last_exit_ns if between else hit.ts)
            return
        if (not call.state_known or not call.end_known) and between:
            # Neither the state nor the Poll says whether its last poll completed it: it
            # ended with its last poll, Ready or cancelled (not told apart: status null).
            call.untold = True
            self._end(call, call.last_exit_ns)
        elif call.poll_start is not None:
            # Dropped inside a poll that never returned: the poll panicked and unwound.
            call.outcome = ("panic", None, None)
            self._end(call, hit.ts)
        else:
            # Dropped between polls, before it completed: cancelled (a timeout, a select).
            call.outcome = ("cancelled", None, None)
            self._end(call, hit.ts)

    def _read(self, function: str, raw: str | None,
              message: str | None) -> tuple[bool | None, tuple | None]:
        """(Ready?, (ok, error type, message) when Ready) from the returned bytes and the
        layout."""
        layout = self.results.get(function)
        if layout is None or raw is None:
            return None, None
        data = bytes.fromhex(raw)
        if _variant(layout["poll"], data) != layout["ready"]:
            return False, None
        variant = _variant(layout["result"], data)
        if variant == "Ok":
            requeue = layout.get("requeue")
            if requeue is None:
                return True, (True, None, None)
            # kube-runtime's Action: Some(duration) or None (await a change).
            after = None
            if _variant(requeue["option"], data) == "Some":
                secs = int.from_bytes(data[requeue["secs"]:requeue["secs"] + 8], "little")
                nanos = int.from_bytes(data[requeue["nanos"]:requeue["nanos"] + 4], "little")
                after = secs * 1_000_000_000 + nanos
            return True, (True, None, {"requeue_after_ns": after})
        error = layout["error_type"] or "Err"
        if layout["error"] is not None:
            name = _variant(layout["error"], data)
            if name:
                error = f"{error}::{name}"
        return True, (False, error, message)

    def _end(self, call: OpenFuture, end_ns: int | None) -> None:
        flight = self.pairer.in_flight
        flight[call.function] -= 1
        span = self._span(call, end_ns)
        if end_ns is not None:
            self.pairer.stats.spans += 1
            if call.span == SPAN_STEP:
                self.pairer.stats.steps += 1
        self.pairer.emit(span)

    def _span(self, call: OpenFuture, end_ns: int | None) -> dict:
        duration = None if end_ns is None else end_ns - call.start_ns
        span: dict = {
            "type": "span",
            "id": call.id,
            "function": call.function,
            "start_ns": call.start_ns,
            "end_ns": end_ns,
            "duration_ns": duration,
            "thread": call.threads[0] if call.threads else None,
            "future": f"0x{call.future:x}",
            "polls": call.polls,
            "cpu_ns": call.cpu_ns,
            "await_ns": None if duration is None else duration - call.cpu_ns,
            "threads": call.threads,
            "request": call.request,
            "result": None,
            "error": None,
        }
        # Ready with Ok/Err not read (no layout): "completed", never "ok".
        status: str | None = "completed"
        if end_ns is None:
            status = "unfinished"
        elif call.untold:
            status = None
        elif call.outcome is not None:
            ok, error, message = call.outcome
            if ok is True:
                span["result"] = {"ok": True, **(message or {})}
                status = "ok"
            elif ok is False:
                span["error"] = {"type": error, "message": message}
                status = "error"
            else:
                status = ok  # "panic" or "cancelled"
        span["status"] = status
        return span

    def close_all(self) -> list[dict]:
        """Futures still pending at the end are written as unfinished (and returned)."""
        spans = []
        for call in self.open.values():
            self.pairer.in_flight[call.function] -= 1
            span = self._span(call, None)
            spans.append(span)
            self.pairer.emit(span)
        self.open.clear()
        return spans


def _variant(enum: dict, data: bytes) -> str | None:
    raw = data[enum["off"]:enum["off"] + enum["size"]]
    if len(raw) < enum["size"]:
        return None
    value = str(int.from_bytes(raw, "little"))
    return enum["values"].get(value, enum["default"])
