"""`tracer export --format chrome` against the Trace Event format and the trace it came from."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from click.testing import CliRunner
from export_support import read_trace_lines

from tracer.front.export_cmd import export

REQUIRED = ("name", "ph", "ts", "pid", "tid")


def chrome(trace, tmp_path) -> dict:
    out = tmp_path / "out.chrome.json"
    result = CliRunner().invoke(export, [str(trace), "--format", "chrome", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def object_of(span: dict) -> str | None:
    request = span.get("request")
    return f"{request['namespace']}/{request['name']}" if request else None


def expected_marks(span: dict) -> set[str]:
    marks = set()
    if span.get("error"):
        marks.add("error")
    if span.get("panic"):
        marks.add("panic")
    result = span.get("result") or {}
    if result.get("requeue"):
        marks.add("requeue")
    if result.get("requeue_after_ns"):
        marks.add("requeue-after")
    return marks


def tracks(doc: dict) -> tuple[dict, dict]:
    """(pid -> process name, (pid, tid) -> thread name) from the metadata events."""
    processes, threads = {}, {}
    for e in doc["traceEvents"]:
        if e["ph"] == "M" and e["name"] == "process_name":
            processes[e["pid"]] = e["args"]["name"]
        if e["ph"] == "M" and e["name"] == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    return processes, threads


def test_every_event_has_the_required_fields(go_trace, tmp_path):
    doc = chrome(go_trace, tmp_path)
    assert doc["displayTimeUnit"] in ("ms", "ns")
    assert doc["traceEvents"]
    for event in doc["traceEvents"]:
        for key in REQUIRED:
            assert key in event, (key, event)
        assert event["ph"] in ("X", "i", "M"), event
        assert isinstance(event["ts"], int | float) and event["ts"] >= 0
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        if event["ph"] == "X":
            assert isinstance(event["dur"], int | float) and event["dur"] >= 0
        if event["ph"] == "i":
            assert event["s"] in ("g", "p", "t")


def test_one_track_per_object_and_per_worker(go_trace, tmp_path):
    header, spans, _ = read_trace_lines(go_trace)
    doc = chrome(go_trace, tmp_path)
    processes, threads = tracks(doc)
    assert len(processes) == 2
    by_name = {name.rsplit(": ", 1)[-1]: pid for pid, name in processes.items()}
    objects_pid, workers_pid = by_name["objects"], by_name["workers"]
    assert all(name.startswith(header["target"]["name"]) for name in processes.values())

    object_names = {name.split(" (overlapping")[0] for (pid, _), name in threads.items()
                    if pid == objects_pid}
    assert object_names == {object_of(s) for s in spans}
    primary = [name for (pid, _), name in threads.items()
               if pid == objects_pid and "(overlapping" not in name]
    assert len(primary) == len(object_names), "one main track per object"
    worker_names = {name for (pid, _), name in threads.items() if pid == workers_pid}
    assert worker_names == {f"goroutine {s['goroutine']}" for s in spans}

    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    for e in slices:
        assert (e["pid"], e["tid"]) in threads, "every slice is on a named track"
        name = threads[(e["pid"], e["tid"])]
        if e["pid"] == workers_pid:
            assert name == f"goroutine {e['args']['goroutine']}"
        else:
            assert name.split(" (overlapping")[0] == object_of(e["args"])


def test_spans_times_and_count_match_the_trace(go_trace, tmp_path):
    header, spans, _ = read_trace_lines(go_trace)
    doc = chrome(go_trace, tmp_path)
    processes, _ = tracks(doc)
    workers_pid = next(p for p, n in processes.items() if n.endswith("workers"))
    origin = header["clock"]["monotonic_ns"]
    by_id = {s["id"]: s for s in spans}
    for pid_is_worker in (True, False):
        slices = [e for e in doc["traceEvents"]
                  if e["ph"] == "X" and (e["pid"] == workers_pid) == pid_is_worker]
        assert len(slices) == len(spans)
        assert Counter(e["args"]["id"] for e in slices) == Counter(list(by_id))
        for e in slices:
            span = by_id[e["args"]["id"]]
            # µs with 3 decimals: exact to the ns up to float rounding.
            assert abs(e["ts"] * 1000 - (span["start_ns"] - origin)) < 2
            assert abs(e["dur"] * 1000 - span["duration_ns"]) < 2


def test_slices_on_one_track_never_partly_overlap(go_trace, tmp_path):
    """Complete events on one track must nest or follow each other, or viewers misdraw them."""
    doc = chrome(go_trace, tmp_path)
    per_track = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            per_track[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for intervals in per_track.values():
        intervals.sort(key=lambda iv: (iv[0], -iv[1]))
        open_ends: list[float] = []
        for start, end in intervals:
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            if open_ends:
                assert end <= open_ends[-1], "a slice starts inside another and ends after it"
            open_ends.append(end)


def test_errors_and_requeues_are_marked_on_exactly_their_spans(go_trace, tmp_path):
    _, spans, _ = read_trace_lines(go_trace)
    by_id = {s["id"]: s for s in spans}
    assert any(expected_marks(s) >= {"error"} for s in spans)
    assert any("requeue" in expected_marks(s) for s in spans)
    assert any("requeue-after" in expected_marks(s) for s in spans)
    assert any("panic" in expected_marks(s) for s in spans)
    doc = chrome(go_trace, tmp_path)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            categories = set(e["cat"].split(",")) - {"reconcile"}
            assert categories == expected_marks(by_id[e["args"]["id"]]), e
    instants = Counter((e["args"]["span_id"], e["name"])
                       for e in doc["traceEvents"] if e["ph"] == "i")
    expected = Counter((s["id"], mark) for s in spans for mark in expected_marks(s))
    assert instants == expected
    for e in doc["traceEvents"]:
        if e["ph"] == "i":
            span = by_id[e["args"]["span_id"]]
            assert e["args"]["object"] == object_of(span)


def test_unfinished_calls_end_at_the_end_of_the_run_and_are_marked(unfinished_trace, tmp_path):
    header, spans, end = read_trace_lines(unfinished_trace)
    unfinished = {s["id"] for s in spans if s["status"] == "unfinished"}
    assert unfinished and end is not None
    doc = chrome(unfinished_trace, tmp_path)
    origin = header["clock"]["monotonic_ns"]
    run_end = end["clock"]["monotonic_ns"]
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    marked = [e for e in slices if "unfinished" in e["cat"].split(",")]
    assert {e["args"]["id"] for e in marked} == unfinished
    assert len(marked) == 2 * len(unfinished)  # on the object track and on the worker track
    for e in marked:
        assert e["args"]["unfinished"] is True
        assert abs((e["ts"] + e["dur"]) * 1000 - (run_end - origin)) < 2
    assert not [e for e in slices if e["args"]["id"] not in unfinished
                and "unfinished" in e["cat"]]


def test_native_trace_has_thread_tracks_only(native_trace, tmp_path):
    _, spans, _ = read_trace_lines(native_trace)
    doc = chrome(native_trace, tmp_path)
    processes, threads = tracks(doc)
    assert len(processes) == 1 and next(iter(processes.values())).endswith("workers")
    assert set(threads.values()) == {f"thread {s['thread']}" for s in spans}
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == len(spans)
    assert {e["tid"] for e in slices} == {s["thread"] for s in spans}
    assert all(e["args"]["return"] == s["return"] for e, s in
               zip(sorted(slices, key=lambda e: e["args"]["id"]),
                   sorted(spans, key=lambda s: s["id"]), strict=True))
