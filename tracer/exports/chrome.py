"""Chrome Trace Event JSON, as Perfetto (ui.perfetto.dev) and chrome://tracing open it.

Two processes of tracks: "objects", one track per reconciled object (namespace/name), and
"workers", one track per goroutine (Go) or thread (native). Every span is a complete event
(`ph: X`) on its worker's track and, when it has a request, on its object's track.

Outcomes are marked four ways, as viewers differ in what they show: the category
(`reconcile,error`, `reconcile,requeue`, ...), the slice name on object tracks (Perfetto
colours slices by name, so equal outcomes share a colour), `cname` (chrome://tracing's
colours), and an instant event (`ph: i`) at the end of every error, panic and requeue.
Unfinished calls (running when the run ended) end at the end of the run, marked
`unfinished`.

Two passes over the file keep memory flat: the first places each call on a track from a
compact list of times, the second writes the events as it reads the spans again (the
format does not require events in time order; viewers sort them).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from tracer.exports import spans as sp
from tracer.exports.source import TraceStream

PID_OBJECTS = 1
PID_WORKERS = 2
COLOURS = {  # chrome://tracing's reserved colour names
    "ok": "good",
    "requeue": "olive",
    "requeue-after": "yellow",
    "error": "bad",
    "panic": "terrible",
    "unfinished": "grey",
}
INSTANT_MARKS = ("panic", "error", "requeue-after", "requeue")


@dataclass
class _Plan:
    """Where each span goes, by its position in the file."""

    origin_ns: int = 0  # ts 0: the attach (or the first call)
    run_end_ns: int = 0  # where unfinished calls end
    object_tid: list[int] = field(default_factory=list)  # 0: no object track
    track_names: dict[int, str] = field(default_factory=dict)  # object tid -> name
    workers: dict[int, str] = field(default_factory=dict)  # worker tid -> name
    spans: int = 0

    def us(self, ns: int) -> float:
        """Trace Event times are µs; kept to the ns (3 decimals)."""
        return round((ns - self.origin_ns) / 1000, 3)


def _worker_tid(span: dict) -> int:
    tid = span.get("goroutine")
    return tid if tid is not None else (span.get("thread") or 0)


def plan_tracks(stream: TraceStream) -> _Plan:
    """First pass. A track holds calls that do not overlap: a well-behaved controller never
    reconciles one object twice at once, but a trace may show it, and partly overlapping
    complete events on one track do not nest, so such a call goes to a second track."""
    plan = _Plan()
    calls: list[tuple[int, int | None, str | None, int]] = []
    for index, span in enumerate(stream.spans()):
        calls.append((span["start_ns"], span.get("end_ns"), sp.object_name(span), index))
        plan.workers[_worker_tid(span)] = sp.worker_name(span)
    plan.spans = len(calls)
    plan.run_end_ns = stream.end_ns()
    starts = [c[0] for c in calls]
    if stream.start_ns is not None:
        starts.append(stream.start_ns)
    plan.origin_ns = min(starts, default=0)

    lanes: dict[str, list[int]] = defaultdict(list)  # object -> each lane's last end
    placed: list[tuple[str, int] | None] = [None] * len(calls)
    calls.sort(key=lambda c: c[0])
    for start, end, obj, index in calls:
        if obj is None:
            continue
        end = plan.run_end_ns if end is None else end
        ends = lanes[obj]
        lane = next((i for i, last in enumerate(ends) if last <= start), len(ends))
        if lane == len(ends):
            ends.append(end)
        else:
            ends[lane] = end
        placed[index] = (obj, lane)
    tids: dict[tuple[str, int], int] = {}
    for obj in sorted(lanes):
        for lane in range(len(lanes[obj])):
            tids[(obj, lane)] = len(tids) + 1
            plan.track_names[tids[(obj, lane)]] = (
                obj if lane == 0 else f"{obj} (overlapping call {lane + 1})")
    plan.object_tid = [tids[p] if p else 0 for p in placed]
    return plan


def _args(span: dict, obj: str | None, worker: str) -> dict:
    args = {k: v for k, v in span.items() if k != "type"}
    args.update(object=obj, worker=worker, outcome=sp.kind(span))
    if span.get("end_ns") is None:
        args["unfinished"] = True
    return args


def _span_events(span: dict, object_tid: int, plan: _Plan) -> Iterator[dict]:
    obj = sp.object_name(span)
    worker = sp.worker_name(span)
    worker_tid = _worker_tid(span)
    end = span["end_ns"] if span.get("end_ns") is not None else plan.run_end_ns
    kind = sp.kind(span)
    marks = sp.marks(span)
    common = {
        "cat": ",".join(["reconcile", *marks]),
        "ph": "X",
        "ts": plan.us(span["start_ns"]),
        "dur": round((end - span["start_ns"]) / 1000, 3),
        "cname": COLOURS[kind],
        "args": _args(span, obj, worker),
    }
    label = obj or sp.short_function(span.get("function") or "call")
    yield {"name": label, "pid": PID_WORKERS, "tid": worker_tid, **common}
    home = (PID_WORKERS, worker_tid)
    if object_tid:
        home = (PID_OBJECTS, object_tid)
        yield {"name": kind, "pid": PID_OBJECTS, "tid": object_tid, **common}
    for mark in INSTANT_MARKS:
        if mark in marks:
            yield {"name": mark, "cat": f"reconcile,{mark}", "ph": "i", "s": "t",
                   "ts": plan.us(end), "pid": home[0], "tid": home[1], "cname": COLOURS[mark],
                   "args": {"span_id": span.get("id"), "object": obj}}


def _metadata(name: str, pid: int, tid: int, value: object) -> dict:
    """Names and orders tracks; process-wide ones carry tid 0, as Chrome's own traces do."""
    key = "sort_index" if name.endswith("sort_index") else "name"
    return {"name": name, "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": {key: value}}


def _metadata_events(plan: _Plan, target: str) -> Iterator[dict]:
    if plan.track_names:
        yield _metadata("process_name", PID_OBJECTS, 0, f"{target}: objects")
        yield _metadata("process_sort_index", PID_OBJECTS, 0, 0)
    yield _metadata("process_name", PID_WORKERS, 0, f"{target}: workers")
    yield _metadata("process_sort_index", PID_WORKERS, 0, 1)
    for tid, name in plan.track_names.items():
        yield _metadata("thread_name", PID_OBJECTS, tid, name)
        yield _metadata("thread_sort_index", PID_OBJECTS, tid, tid)
    for order, (tid, name) in enumerate(sorted(plan.workers.items())):
        yield _metadata("thread_name", PID_WORKERS, tid, name)
        yield _metadata("thread_sort_index", PID_WORKERS, tid, order)


def chrome_events(stream: TraceStream, plan: _Plan | None = None) -> Iterator[dict]:
    """Every event of the trace, spans in file order, then the track names."""
    plan = plan or plan_tracks(stream)
    for index, span in enumerate(stream.spans()):
        if index >= plan.spans:
            break  # a trace still being written grew after the first pass
        yield from _span_events(span, plan.object_tid[index], plan)
    target = (stream.header.get("target") or {}).get("name") or "target"
    yield from _metadata_events(plan, target)


def write_chrome(stream: TraceStream, out: IO[str]) -> int:
    """Write the JSON object form (traceEvents + otherData); returns the number of spans."""
    plan = plan_tracks(stream)
    out.write('{"traceEvents":[\n')
    for n, event in enumerate(chrome_events(stream, plan)):
        out.write((",\n" if n else "") + json.dumps(event, separators=(",", ":")))
    wall = dt.datetime.fromtimestamp((plan.origin_ns + stream.clock_offset) / 1e9, dt.UTC)
    other = {
        "tracer_trace": stream.path,
        "target": (stream.header.get("target") or {}).get("name") or "",
        "time_zero_utc": wall.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "spans": str(plan.spans),
        "truncated": str(stream.truncated).lower(),
    }
    out.write('\n],"displayTimeUnit":"ms","otherData":' + json.dumps(other) + "}\n")
    return plan.spans
