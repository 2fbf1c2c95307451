"""`tracer report` on a trace of the real sample operator, against the operator's own record
of every call and why it was made."""

from __future__ import annotations

import json
import signal
from collections import Counter

from helpers import match_spans, read_lines, wait_for_header, wait_until
from report_support import report_json

# A pace at which calls on one object do not pile up: 200 events/s over 60 keys (20 names x
# 3 namespaces) is one event per key every 300 ms, and every follow-up (1 ms requeue, 1-5 ms
# RequeueAfter, 5-100 ms backoff) is due long before the key's next event.
KNOBS = ["-linger", "-rate", "200", "-objects", "20", "-workers", "4", "-calls", "1500",
         "-error-every", "9", "-requeue-every", "13", "-requeue-after-every", "17",
         "-panic-every", "101"]
# The sample's producer feeds its queue directly: no watch event reaches the trace, so a call
# it made is rightly unexplained. A recovered panic backs off like an error.
EXPECTED = {"event": "unexplained", "requeue": "requeue", "requeue-after": "requeue-after",
            "error-backoff": "error-backoff", "panic-backoff": "error-backoff"}


def test_causes_and_figures_of_a_real_operator(operator, tracer_cmd, tmp_path):
    op = operator("go1.27/sample-operator", *KNOBS)
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--output", str(trace), "--quiet")
    wait_for_header(trace, run)
    op.start_work()
    wait_until(op.done, 120, "the operator to finish its calls")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()

    truth = op.calls()
    spans = [r for r in read_lines(trace) if r["type"] == "span"]
    assert len(spans) == len(truth) >= 1500
    assert set(Counter(c["cause"] for c in truth)) == set(EXPECTED), "every cause occurred"
    matched = match_spans(truth, spans)

    causes_file = tmp_path / "causes.jsonl"
    # The sample caps its backoff at 100 ms (controller-runtime: 1000 s).
    report = report_json(str(trace), "--backoff-cap", "0.1", "--causes-out", str(causes_file))
    found = {line["id"]: line for line in map(json.loads, causes_file.read_text().splitlines())}

    # None dropped: one cause per call, and the shares add up to the calls.
    assert len(found) == len(spans) == report["causes"]["total"] == report["total"]["calls"]
    assert sum(report["causes"]["counts"].values()) == len(spans)

    right = Counter()
    for call in truth:
        right[EXPECTED[call["cause"]] == found[matched[call["seq"]]["id"]]["cause"]] += 1
    print(f"causes right: {right[True]} of {len(truth)} ({right[True] / len(truth):.2%})")
    assert right[True] / len(truth) >= 0.95, right

    # The evidence of a follow-up names the call that asked for it: the object's previous
    # call in the operator's own order.
    previous_call: dict[int, dict] = {}
    by_object: dict[tuple, list[dict]] = {}
    for call in sorted(truth, key=lambda c: c["entry_ns"]):
        by_object.setdefault((call["namespace"], call["name"]), []).append(call)
    for calls in by_object.values():
        for before, after in zip(calls, calls[1:], strict=False):
            previous_call[after["seq"]] = before
    follow_ups = [c for c in truth if c["cause"] != "event"]
    named = sum(found[matched[c["seq"]]["id"]]["trigger_id"]
                == matched[previous_call[c["seq"]]["seq"]]["id"] for c in follow_ups)
    assert named / len(follow_ups) >= 0.95

    # The figures, from the operator's record.
    total = report["total"]
    assert total["errors"]["by_type"] == dict(Counter(
        c["error"]["type"] for c in truth if c["error"] and not c["panic"]))
    assert total["panics"]["count"] == sum(1 for c in truth if c["panic"])
    assert total["requeues"]["requeue"] == sum(c["requeue"] for c in truth)
    assert total["requeues"]["requeue_after"] == sum(c["requeue_after_ns"] > 0 for c in truth)
    assert {(o["namespace"], o["name"]): o["calls"] for o in report["objects"]} == {
        key: len(calls) for key, calls in by_object.items()}
    # A span holds its call, so its duration is at least the call's.
    longest = max(c["exit_ns"] - c["entry_ns"] for c in truth) / 1e9
    assert total["duration_s"]["max"] >= longest
    assert total["peak_concurrency"] <= 4  # four workers
