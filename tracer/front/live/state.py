"""What the live view shows, kept up to date span by span.

`add()` runs on the tracer's hit-reading thread and only updates counters; the screen takes a
`snapshot()` under the same short lock and renders from it, so capture never waits for the
terminal.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field

from tracer.front.lines import outcome

RATE_WINDOW_NS = 60_000_000_000
TAIL = 200
RECENT = 10_000  # durations kept per function for the percentiles
MAX_INTERVALS = 4_096
FORGET_AFTER_NS = 60_000_000_000
PENDING_PARENTS = 10_000  # reconciles in flight whose steps wait for the reconcile's span


class IntervalUnion:
    """Total length of the union of [start, end) intervals added in any order: the time
    with at least one call in flight. Spans arrive by end time, so merges happen at the tail
    and stay cheap."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.total = 0

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        if len(self.ends) > MAX_INTERVALS:
            # Forget the layout of the distant past (its length stays counted): a call that
            # started that long ago and overlapped it is all that could be miscounted.
            keep = bisect.bisect_left(self.ends, self.ends[-1] - FORGET_AFTER_NS)
            del self.starts[:keep]
            del self.ends[:keep]
        i = bisect.bisect_left(self.ends, start)
        j = bisect.bisect_right(self.starts, end)
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
            self.total -= sum(e - s for s, e in zip(self.starts[i:j], self.ends[i:j],
                                                    strict=True))
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]
        self.total += end - start

    @property
    def last_end(self) -> int | None:
        return self.ends[-1] if self.ends else None


@dataclass
class FunctionStats:
    calls: int = 0
    errors: int = 0
    requeues: int = 0
    unfinished: int = 0
    # The last RECENT durations, sorted, for p50/p95 of recent calls at a bounded cost per
    # span; `order` remembers which to drop next. The maximum is of the whole run.
    durations: list[int] = field(default_factory=list)
    order: deque = field(default_factory=deque)
    max_ns: int | None = None
    recent_starts: deque = field(default_factory=deque)
    last_start: int | None = None
    total_ns: int = 0  # of finished calls, what step shares are of

    def add_duration(self, ns: int) -> None:
        bisect.insort(self.durations, ns)
        self.order.append(ns)
        if len(self.order) > RECENT:
            old = self.order.popleft()
            del self.durations[bisect.bisect_left(self.durations, old)]
        self.max_ns = ns if self.max_ns is None else max(self.max_ns, ns)

    def percentile(self, q: float) -> int | None:
        if not self.durations:
            return None
        return self.durations[min(len(self.durations) - 1, int(q * len(self.durations)))]


@dataclass
class ObjectStats:
    key: str
    calls: int = 0
    last_start: int = 0
    last_duration: int | None = None
    last_result: str = ""
    interval: int | None = None  # between its last two starts
    total_ns: int = 0


@dataclass
class StepStats:
    """A step function (child spans) within the reconcile function that called it."""

    function: str
    parent_function: str
    depth: int
    calls: int = 0
    total_ns: int = 0


@dataclass
class Snapshot:
    now: int
    since: int | None
    functions: dict[str, FunctionStats]
    in_flight: dict[str, int]
    objects: list[ObjectStats]
    tail: list[dict]
    errors: list[dict]
    busy_ns: int
    last_end: int | None
    spans: int
    steps: list[StepStats] = field(default_factory=list)


def result_word(span: dict) -> str:
    """Short result for a table cell: ok, requeue, requeue after N, error type, panic."""
    if span.get("status") == "unfinished":
        return "unfinished"
    if span.get("panic"):
        return "panic"
    if span.get("error"):
        return span["error"]["type"]
    text = outcome(span)
    return text


class LiveState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.functions: dict[str, FunctionStats] = {}
        self.objects: dict[str, ObjectStats] = {}
        self.tail: deque[dict] = deque(maxlen=TAIL)
        self.errors: deque[dict] = deque(maxlen=TAIL)
        self.busy = IntervalUnion()
        self.spans = 0
        self.first_start: int | None = None
        self.steps: dict[tuple[str, str], StepStats] = {}
        # A reconcile's steps end before it does: held by its span id until it arrives.
        self.pending: dict[int, list[dict]] = {}

    def add(self, span: dict) -> None:
        with self._lock:
            self._add(span)

    def _add_step(self, span: dict) -> None:
        if span.get("end_ns") is None:
            return
        if len(self.pending) >= PENDING_PARENTS:
            del self.pending[next(iter(self.pending))]
        self.pending.setdefault(span["parent"], []).append(span)

    def _steps_of(self, span: dict) -> None:
        for step in self.pending.pop(span.get("id"), ()):
            key = (span["function"], step["function"])
            stats = self.steps.get(key)
            if stats is None:
                stats = self.steps[key] = StepStats(step["function"], span["function"],
                                                    step.get("depth") or 1)
            stats.calls += 1
            stats.total_ns += step["end_ns"] - step["start_ns"]

    def _add(self, span: dict) -> None:
        if span.get("parent") is not None:
            self._add_step(span)
            return
        self.spans += 1
        self._steps_of(span)
        fn = self.functions.setdefault(span["function"], FunctionStats())
        start, end = span["start_ns"], span.get("end_ns")
        fn.calls += 1
        if self.first_start is None or start < self.first_start:
            self.first_start = start
        if end is None:
            fn.unfinished += 1
        else:
            fn.add_duration(end - start)
            fn.total_ns += end - start
            self.busy.add(start, end)
        if span.get("error") or span.get("panic"):
            fn.errors += 1
            self.errors.append(span)
        result = span.get("result") or {}
        if result.get("requeue") or result.get("requeue_after_ns"):
            fn.requeues += 1
        fn.recent_starts.append(start)
        fn.last_start = max(fn.last_start or start, start)
        self.tail.append(span)

        request = span.get("request")
        if request:
            key = f"{request['namespace']}/{request['name']}"
            obj = self.objects.get(key)
            if obj is None:
                obj = self.objects[key] = ObjectStats(key)
            elif start > obj.last_start:
                obj.interval = start - obj.last_start
            obj.calls += 1
            if start >= obj.last_start:
                obj.last_start = start
                obj.last_duration = None if end is None else end - start
                obj.last_result = result_word(span)
            if end is not None:
                obj.total_ns += end - start

    def snapshot(self, now: int, in_flight: dict[str, int], since: int | None) -> Snapshot:
        with self._lock:
            for fn in self.functions.values():
                while fn.recent_starts and fn.recent_starts[0] < now - RATE_WINDOW_NS:
                    fn.recent_starts.popleft()
            functions = {
                name: FunctionStats(fn.calls, fn.errors, fn.requeues, fn.unfinished,
                                    list(fn.durations), deque(), fn.max_ns,
                                    deque(fn.recent_starts), fn.last_start, fn.total_ns)
                for name, fn in self.functions.items()
            }
            return Snapshot(
                now=now,
                since=since if since is not None else self.first_start,
                functions=functions,
                in_flight=dict(in_flight),
                objects=[ObjectStats(**vars(o)) for o in self.objects.values()],
                tail=list(self.tail),
                errors=list(self.errors),
                busy_ns=self.busy.total,
                last_end=self.busy.last_end,
                spans=self.spans,
                steps=[StepStats(**vars(st)) for st in self.steps.values()],
            )
