"""Synthetic trace files shaped like a controller-runtime operator, with the true causes.

For the `tracer report` benchmark and for tests that need traces larger than a test can record
live. It simulates controller-runtime's work queue (a FIFO that de-duplicates a key already
waiting, never runs one key twice at once and re-adds a key changed while it runs), its
per-object exponential failure backoff, RequeueAfter timers and watch events, and writes the
records in the order the tracer would (spans as they finish).

    python -m tracer.analysis.synthetic OUT.jsonl --spans 1000000
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

VERSION = 1  # bump when the output changes, so cached benchmark files are remade
MS = 1_000_000
S = 1_000_000_000
BACKOFF_BASE_NS = 5 * MS
BACKOFF_CAP_NS = 1000 * S  # controller-runtime's default ItemExponentialFailureRateLimiter
ERRORS = [
    ("*errors.errorString", "failed to reconcile {key}"),
    ("*fmt.wrapError", "updating status of {key}: conflict"),
    ("*controllers.RetryableError", "retry {key} later"),
]


@dataclass
class Controller:
    """One reconciler: its own queue and workers, like one controller-runtime controller."""

    function: str
    kind: str
    keys: list[tuple[str, str]]
    workers: list[int]  # goroutine ids
    queue: deque = field(default_factory=deque)
    dirty: dict = field(default_factory=dict)  # key -> cause of the first add since the Get
    processing: set = field(default_factory=set)
    failures: dict = field(default_factory=dict)
    idle: list = field(default_factory=list)


class Simulation:
    def __init__(self, spans: int, objects: int, workers: int, seed: int,
                 change_period_s: float, hidden_changes: float) -> None:
        self.rng = random.Random(seed)
        self.target = spans
        self.hidden = hidden_changes  # share of changes the trace has no event line for
        self.period_ns = int(change_period_s * S)
        self.t0 = 1_000 * S
        self.heap: list = []
        self.seq = 0
        self.span_id = 0
        self.written = 0
        self.truth: dict[int, str] = {}
        self.rv = 1000
        self.controllers = []
        goroutine = 100
        for i, kind in enumerate(["Memcached", "Backup"]):
            n = objects if i == 0 else max(1, objects // 4)
            keys = [(f"ns-{j % 5}", f"{kind.lower()}-{j}") for j in range(n)]
            ids = list(range(goroutine, goroutine + workers))
            goroutine += workers
            self.controllers.append(Controller(
                f"example.com/op/controllers.(*{kind}Reconciler).Reconcile", kind, keys, ids,
                idle=list(ids)))

    def push(self, t: int, kind: str, *payload) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    def add(self, c: Controller, key: tuple, cause: str) -> None:
        if key in c.dirty:
            return  # merged into the waiting item
        c.dirty[key] = cause
        if key not in c.processing:
            c.queue.append(key)

    def records(self) -> Iterator[dict]:
        yield {"type": "header", "schema": 1, "tracer_version": "synthetic",
               "clock": {"monotonic_ns": self.t0, "realtime_ns": 1_700_000_000 * S},
               "target": {"pid": 1, "name": "synthetic-operator", "argv": None},
               "binary": {"path": "synthetic", "build_id": None, "language": "go",
                          "go_version": "go1.22.0", "stripped": False, "dwarf": True,
                          "pie": False},
               "backend": "gdb", "probe": "controller-runtime",
               "functions": [c.function for c in self.controllers], "breakpoints": 0,
               "capture_args": True, "attach_pause_ms": 0.0, "notes": []}
        for ci, c in enumerate(self.controllers):
            for key in c.keys:
                # The informer's initial list: every object arrives once as ADDED.
                self.push(self.t0 + self.rng.randrange(50 * MS), "change", ci, key, "ADDED")
        now = self.t0
        while self.heap and self.written < self.target:
            now, _, kind, payload = heapq.heappop(self.heap)
            if kind == "change":
                ci, key, verb = payload
                c = self.controllers[ci]
                self.rv += 1
                seen = self.rng.random() >= self.hidden
                if seen:
                    yield {"type": "event", "ts_ns": now, "kind": c.kind, "namespace": key[0],
                           "name": key[1], "event": verb, "resource_version": str(self.rv),
                           "generation": self.rv}
                self.add(c, key, "change" if seen else "unexplained")
                gap = int(self.rng.expovariate(1 / self.period_ns))
                self.push(now + gap, "change", ci, key, "MODIFIED")
            elif kind == "timer":
                ci, key, cause = payload
                self.add(self.controllers[ci], key, cause)
            elif kind == "done":
                yield from self.finish(now, *payload)
            self.dispatch(now)
        yield from self.unfinished(now)

    def dispatch(self, now: int) -> None:
        for ci, c in enumerate(self.controllers):
            while c.idle and c.queue:
                key = c.queue.popleft()
                cause = c.dirty.pop(key)
                c.processing.add(key)
                goroutine = c.idle.pop()
                self.span_id += 1
                duration = int(self.rng.lognormvariate(0, 0.8) * 3 * MS)
                start = now + self.rng.randrange(20_000, 200_000)  # queue hand-off
                self.truth[self.span_id] = cause
                self.push(start + duration, "done", ci, key, goroutine, self.span_id, start)

    def finish(self, now: int, ci: int, key: tuple, goroutine: int, span_id: int,
               start: int) -> Iterator[dict]:
        c = self.controllers[ci]
        c.processing.discard(key)
        c.idle.append(goroutine)
        if key in c.dirty:
            c.queue.append(key)  # changed while it ran: runs again
        draw = self.rng.random()
        result: dict | None = {"requeue": False, "requeue_after_ns": 0}
        error = panic = None
        status = "ok"
        if draw < 0.03:
            etype, message = self.rng.choice(ERRORS)
            error = {"type": etype, "message": message.format(key="/".join(key))}
            status = "error"
        elif draw < 0.033:
            result, status = None, "panic"
            panic = {"type": "string", "message": f"nil map in {'/'.join(key)}"}
        elif draw < 0.06:
            result["requeue"] = True
        elif draw < 0.16:
            result["requeue_after_ns"] = self.rng.choice([1, 2, 5, 10, 30]) * S
        # controller-runtime's reconcileHandler: error first, then RequeueAfter, then Requeue.
        if status != "ok" or result["requeue"] and not result["requeue_after_ns"]:
            n = c.failures.get(key, 0)
            c.failures[key] = n + 1
            delay = min(BACKOFF_BASE_NS << min(n, 40), BACKOFF_CAP_NS)
            cause = "requeue" if status == "ok" else "error-backoff"
            self.push(now + delay, "timer", ci, key, cause)
        else:
            c.failures.pop(key, None)
            if result["requeue_after_ns"]:
                self.push(now + result["requeue_after_ns"], "timer", ci, key, "requeue-after")
        self.written += 1
        yield {"type": "span", "id": span_id, "function": c.function, "start_ns": start,
               "end_ns": now, "duration_ns": now - start, "goroutine": goroutine,
               "thread": 1000 + goroutine % 7,
               "request": {"namespace": key[0], "name": key[1]},
               "result": result, "error": error, "panic": panic, "status": status}

    def unfinished(self, now: int) -> Iterator[dict]:
        for _, _, kind, payload in sorted(self.heap):
            if kind != "done":
                continue
            ci, key, goroutine, span_id, start = payload
            yield {"type": "span", "id": span_id, "function": self.controllers[ci].function,
                   "start_ns": start, "end_ns": None, "duration_ns": None,
                   "goroutine": goroutine, "thread": 1000 + goroutine % 7,
                   "request": {"namespace": key[0], "name": key[1]}, "result": None,
                   "error": None, "panic": None, "status": "unfinished"}
        yield {"type": "end", "reason": "SIGINT",
               "clock": {"monotonic_ns": now + MS, "realtime_ns": 1_700_000_000 * S + now + MS
                         - self.t0},
               "target_status": None, "spans": self.written, "unfinished": None,
               "pairing": None, "agent_errors": 0, "breakpoints_removed": 0,
               "code_restored": True}


def write_trace(path: str, spans: int, *, objects: int = 200, workers: int = 4, seed: int = 1,
                change_period_s: float = 2.0, hidden_changes: float = 0.02) -> dict[int, str]:
    """Write a trace of about `spans` finished spans; returns the true cause of every span id.

    In-flight spans at the end are written as unfinished, as the tracer does."""
    sim = Simulation(spans, objects, workers, seed, change_period_s, hidden_changes)
    with open(path, "w", encoding="utf-8") as f:
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        f.writelines(dumps(record) + "\n" for record in sim.records())
    return sim.truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    write_trace(args.output, args.spans, objects=args.objects, workers=args.workers,
                seed=args.seed)


if __name__ == "__main__":
    main()
