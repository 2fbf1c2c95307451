"""The report's statistics against brute-force computations on the same random traces."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from report_support import CLOCK, FUNCTION, MS, S, end, header, report_json, span, write_jsonl

BACKUP = "example.com/op/controllers.(*BackupReconciler).Reconcile"
T0 = CLOCK["monotonic_ns"]
ERRORS = ["*errors.errorString", "*fmt.wrapError", "*controllers.RetryableError"]


def random_spans(seed: int, n: int = 600, t0: int = T0 + 10 * MS, first_id: int = 1):
    rng = random.Random(seed)
    spans, t = [], t0
    for i in range(first_id, first_id + n):
        t += rng.choice([0, 100_000, MS, 3 * MS, 20 * MS, 200 * MS])
        draw = rng.random()
        finished = rng.random() > 0.03
        spans.append(span(
            i, t, t + rng.randrange(1, 30 * MS) if finished else None,
            name=rng.choice(["a", "b", "c", "d"]), namespace=rng.choice(["x", "y"]),
            function=rng.choice([FUNCTION, FUNCTION, BACKUP]),
            requeue=draw < 0.1, after=rng.choice([MS, S]) if 0.1 <= draw < 0.2 else 0,
            error=rng.choice(ERRORS) if 0.2 <= draw < 0.3 else None,
            panic=0.3 <= draw < 0.33))
    return spans


def brute(spans: list[dict], windows: list[tuple[int, int]]) -> dict:
    """Statistics of one group, the slow obvious way (monotonic ns, one clock)."""
    finished = [s for s in spans if s["end_ns"] is not None]
    durations = np.array([(s["end_ns"] - s["start_ns"]) / 1e9 for s in finished])
    intervals = []
    busy = 0
    longest = 0
    for lo, hi in windows:
        inside = sorted((s for s in spans if lo <= s["start_ns"] <= hi),
                        key=lambda s: s["start_ns"])
        starts = [s["start_ns"] for s in inside]
        intervals += [(b - a) / 1e9 for a, b in zip(starts, starts[1:], strict=False)]
        # Union of [start, end) with unfinished calls running to the window's end.
        cursor = lo
        for s in inside:
            stop = hi if s["end_ns"] is None else s["end_ns"]
            if s["start_ns"] > cursor:
                longest = max(longest, s["start_ns"] - cursor)
            if stop > cursor:
                busy += stop - max(cursor, s["start_ns"])
                cursor = stop
        longest = max(longest, hi - cursor)
    wall = sum(hi - lo for lo, hi in windows)
    points = sorted([(s["start_ns"], 1) for s in spans]
                    + [(s["end_ns"], -1) for s in finished])
    level = peak = 0
    for _, step in points:
        level += step
        peak = max(peak, level)
    return {
        "calls": len(spans), "unfinished": len(spans) - len(finished),
        "durations": durations, "intervals": np.array(intervals),
        "idle_share": (wall - busy) / wall, "longest_gap": longest / 1e9, "peak": peak,
        "errors": Counter(s["error"]["type"] for s in spans if s["status"] == "error"),
        "panics": sum(s["status"] == "panic" for s in spans),
        "requeue": sum(bool(s["result"] and s["result"]["requeue"]) for s in spans),
        "requeue_after": sum(bool(s["result"] and s["result"]["requeue_after_ns"])
                             for s in spans),
        "rate": len(spans) / (wall / 1e9),
    }


def check(group: dict, want: dict) -> None:
    assert group["calls"] == want["calls"]
    assert group["unfinished"] == want["unfinished"]
    d = group["duration_s"]
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert d[key] == pytest.approx(np.percentile(want["durations"], q), abs=1e-9)
    assert d["max"] == pytest.approx(want["durations"].max(), abs=1e-9)
    i = group["interval_s"]
    assert i["count"] == len(want["intervals"])
    assert i["mean"] == pytest.approx(want["intervals"].mean(), abs=1e-9)
    assert i["sd"] == pytest.approx(want["intervals"].std(ddof=1), abs=1e-9)
    assert i["min"] == pytest.approx(want["intervals"].min(), abs=1e-9)
    assert i["median"] == pytest.approx(np.median(want["intervals"]), abs=1e-9)
    assert i["max"] == pytest.approx(want["intervals"].max(), abs=1e-9)
    hist = i["histogram"]
    assert sum(hist["counts"]) + hist["below"] + hist["above"] == i["count"]
    assert group["idle"]["share"] == pytest.approx(want["idle_share"], abs=1e-9)
    assert group["idle"]["longest_gap_s"] == pytest.approx(want["longest_gap"], abs=1e-9)
    assert group["peak_concurrency"] == want["peak"]
    assert group["errors"]["count"] == sum(want["errors"].values())
    assert group["errors"]["by_type"] == dict(want["errors"])
    assert group["panics"]["count"] == want["panics"]
    assert group["requeues"]["requeue"] == want["requeue"]
    assert group["requeues"]["requeue_after"] == want["requeue_after"]
    assert group["rate_per_s"] == pytest.approx(want["rate"])


@pytest.mark.parametrize("seed", [1, 2])
def test_total_functions_and_objects_match_brute_force(tmp_path, seed):
    spans = random_spans(seed)
    stop = max(s["end_ns"] or s["start_ns"] for s in spans) + 50 * MS
    trace = write_jsonl(tmp_path / "t.jsonl", [header([FUNCTION, BACKUP]), *spans, end(stop)])
    report = report_json(str(trace))
    windows = [(T0, stop)]
    check(report["total"], brute(spans, windows))
    assert {f["function"] for f in report["functions"]} == {FUNCTION, BACKUP}
    for group in report["functions"]:
        check(group, brute([s for s in spans if s["function"] == group["function"]], windows))
    objects = Counter((s["function"], s["request"]["namespace"], s["request"]["name"])
                      for s in spans)
    assert len(report["objects"]) == len(objects)
    for group in report["objects"]:
        key = (group["function"], group["namespace"], group["name"])
        check(group, brute([s for s in spans if (s["function"], s["request"]["namespace"],
                                                 s["request"]["name"]) == key], windows))


def test_histogram_edges_given_in_seconds(tmp_path):
    spans = random_spans(5)
    trace = write_jsonl(tmp_path / "t.jsonl", [header(), *spans, end(10**13)])
    edges = [0.001, 0.01, 0.1]
    hist = report_json(str(trace), "--bins", "0.001,0.01,0.1")["total"]["interval_s"][
        "histogram"]
    starts = sorted(s["start_ns"] for s in spans)
    intervals = [(b - a) / 1e9 for a, b in zip(starts, starts[1:], strict=False)]
    assert hist["edges_s"] == edges
    assert hist["below"] == sum(x < 0.001 for x in intervals)
    assert hist["counts"] == [sum(0.001 <= x < 0.01 for x in intervals),
                              sum(0.01 <= x <= 0.1 for x in intervals)]
    assert hist["above"] == sum(x > 0.1 for x in intervals)
    equal = report_json(str(trace), "--bins", "4")["total"]["interval_s"]["histogram"]
    assert len(equal["counts"]) == 4 and equal["below"] == equal["above"] == 0


def test_files_merge_and_the_gap_between_runs_is_not_measured(tmp_path):
    """Two runs traced apart: one timeline, but no interval or idle time across the gap."""
    first = random_spans(3, n=200)
    stop1 = max(s["end_ns"] or s["start_ns"] for s in first) + 10 * MS
    later = T0 + 3600 * S
    second = random_spans(4, n=200, t0=later + 5 * MS, first_id=1)
    stop2 = max(s["end_ns"] or s["start_ns"] for s in second) + 10 * MS
    clock2 = {"monotonic_ns": later, "realtime_ns": CLOCK["realtime_ns"] + later - T0}
    a = write_jsonl(tmp_path / "a.jsonl", [header([FUNCTION, BACKUP]), *first, end(stop1)])
    b = write_jsonl(tmp_path / "b.jsonl", [header([FUNCTION, BACKUP], clock2), *second,
                                           end(stop2, clock2)])
    report = report_json(str(a), str(b))
    assert report["window"]["segments"] == 2
    assert report["window"]["observed_s"] == pytest.approx((stop1 - T0 + stop2 - later) / 1e9)
    check(report["total"], brute(first + second, [(T0, stop1), (later, stop2)]))
    assert [s["spans"] for s in report["sources"]] == [200, 200]


def test_unfinished_calls_count_but_have_no_duration(tmp_path):
    spans = [span(1, T0 + MS, T0 + 3 * MS), span(2, T0 + 2 * MS, None),
             span(3, T0 + 4 * MS, T0 + 10 * MS)]
    trace = write_jsonl(tmp_path / "t.jsonl", [header(), *spans, end(T0 + 20 * MS)])
    total = report_json(str(trace))["total"]
    assert (total["calls"], total["finished"], total["unfinished"]) == (3, 2, 1)
    assert total["duration_s"]["max"] == pytest.approx(0.006)
    assert total["peak_concurrency"] == 2  # the unfinished call is still running
    # Busy from 1 ms (first start) to 20 ms (the end: call 2 never returned).
    assert total["idle"]["share"] == pytest.approx(1 / 20)
