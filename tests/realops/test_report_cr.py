"""`tracer report` on a trace of the real controller-runtime operator, run outside the cluster
as `make run` runs it (attached by PID, its objects' changes recorded with --watch), against
the operator's own record: the same calls, the same errors, and every cause it names backed
by what the operator really returned or by the change the test really made."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

from helpers import read_lines, run_tracer, wait_for_header

from .operators import CR_BUILDS, drive_workload

BUILD = "cr-operator"
SLACK_NS = 10_000_000  # the report's --event-slack default


def test_report_counts_errors_and_causes(cr_operator, cr_namespace, realops_cluster,
                                         tracer_cmd, tmp_path):
    op = cr_operator(BUILD, cr_namespace)
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--output", str(trace), "--quiet",
                     "--max-stopped", "off", "--kubeconfig", str(realops_cluster.kubeconfig),
                     "-n", cr_namespace, "--watch", "memcacheds.cache.example.com",
                     "--watch", "configmaps")
    wait_for_header(trace, run)
    opened = time.monotonic_ns()
    work = drive_workload(realops_cluster.api_client, cr_namespace, operator=op,
                          has_priority=CR_BUILDS[BUILD].has_priority)
    time.sleep(1)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    # The operator watches only this fresh namespace: every call it made is in the window.
    truth = op.records()
    assert truth and all(r["entry_ns"] > opened for r in truth)
    events = [r for r in read_lines(trace) if r["type"] == "event"]
    assert any(e["owner"] == {"kind": "Memcached", "name": f"{e['name'][:-len('-config')]}"}
               for e in events if e["kind"] == "ConfigMap" and e["name"].endswith("-config"))

    causes_file = tmp_path / "causes.jsonl"
    got = run_tracer("report", str(trace), "--json", "--causes-out", str(causes_file))
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    total = report["total"]
    assert total["calls"] == total["finished"] == len(truth)
    assert total["errors"]["by_type"] == dict(Counter(
        r["error"]["type"] for r in truth if r["error"]))
    assert total["requeues"]["requeue"] == sum(r["requeue"] and not r["error"] for r in truth)

    # Each timer cause the report names is what an earlier call on the object returned (the
    # operator's own record of the call that set it), and each change a watch event.
    causes = [json.loads(line) for line in causes_file.read_text().splitlines()]
    assert len(causes) == len(truth)
    spans = {s["id"]: s for s in read_lines(trace) if s["type"] == "span"}
    truth_of = {}
    for span in spans.values():
        found = [r for r in truth if r["goroutine"] == span["goroutine"]
                 and span["start_ns"] <= r["entry_ns"] and r["exit_ns"] <= span["end_ns"]]
        assert len(found) == 1
        truth_of[span["id"]] = found[0]
    for cause in causes:
        if cause["cause"] in ("requeue-after", "requeue", "error-backoff"):
            previous = truth_of[cause["trigger_id"]]
            assert previous["name"] == cause["name"]
            assert {"requeue-after": previous["requeue_after_ns"] > 0 and not previous["error"],
                    "requeue": previous["requeue"] and not previous["error"],
                    "error-backoff": previous["error"] is not None}[cause["cause"]], \
                json.dumps([cause, previous])
    # Every change the test made: its watch event, and a call after it (the tracer may hear
    # the event a few ms after the operator does). A call on an object
    # with no timer pending (no error, requeue or RequeueAfter planned) is the change's; on
    # the others a due timer and the change merge in the queue, and either is its cause.
    verbs = {"create": "ADDED", "update": "MODIFIED", "delete": "DELETED"}
    changes = {(c["name"], c["event"]["event"]) for c in causes if c["cause"] == "change"}
    for action in work.actions:
        seen = [e["ts_ns"] for e in events if e["name"] == action.name
                and e["event"] == verbs[action.verb] and e["ts_ns"] >= action.t_ns]
        assert seen, action
        assert any(s["request"]["name"] == action.name and -20e6 <= s["start_ns"] - seen[0] < 1e9
                   for s in spans.values()), action
        planned = work.planned(action.name)
        if not (planned.requeue or planned.requeue_after_ms or planned.fail_with):
            # The report's own limit: a change the tracer heard more than --event-slack
            # (10 ms) after the operator's call on it started cannot be tied to that call.
            late = [s for s in spans.values() if s["request"]["name"] == action.name
                    and action.t_ns <= s["start_ns"] < seen[0] - SLACK_NS]
            assert (action.name, verbs[action.verb]) in changes or late, action
    counts = report["causes"]["counts"]
    assert counts["change"] >= 0.9 * len(work.actions)
    assert counts["unexplained"] <= 0.1 * len(truth), counts
