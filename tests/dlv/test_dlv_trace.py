"""The same operator traced by gdb and by Delve: the same spans, each against the operator's
own record of every call (real dlv, real gdb, real compiled operators, the real CLI)."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from helpers import (
    assert_every_call_once,
    read_lines,
    tracer_pid,
    wait_for_header,
    wait_until,
)

# Smaller than the gdb test's run: Delve costs about a millisecond per hit.
KNOBS = [
    "-workers", "4", "-calls", "300", "-objects", "40",
    "-error-every", "9", "-requeue-every", "13", "-requeue-after-every", "17",
    "-recurse-every", "23", "-panic-every", "101", "-linger",
]
# build -> how Delve reads its values (by name needs -N -l and a Go it knows: Delve 1.20.2
# read no argument of Go 1.27's DWARF 5, Delve 1.27.2 reads them)
BUILDS = {
    "go1.19/sample-operator-debug": "by name",
    "go1.19/sample-operator": "from registers",
    "go1.27/sample-operator-debug": "by name",
    "go1.27/sample-operator": "from registers",
}


def traced(operator, tracer_cmd, tmp_path, build: str, backend: str):
    op = operator(build, *KNOBS)
    trace = tmp_path / f"trace-{backend}.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--backend", backend, "-o", str(trace), "-q",
                     "--max-stopped", "off")
    header = wait_for_header(trace, run)
    op.start_work()
    done = wait_until(op.done, 120, "the operator to finish its calls")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    records = read_lines(trace)
    truth = op.calls()
    assert len(truth) == done["calls"] >= 300
    end = records[-1]
    assert end["type"] == "end" and end["reason"] == "SIGINT"
    assert end["code_restored"] is True and end["agent_errors"] == 0
    assert tracer_pid(op.pid) == 0
    # Delve's detach may answer a SIGSTOP of its own with SIGCONT (see test_dlv_safety).
    assert [s for s in op.stray_signals() if s != "signal: continued"] == [], \
        "the tracer delivered a signal to the operator"
    spans = [r for r in records if r["type"] == "span"]
    return header, truth, spans


def outcome(span: dict) -> tuple:
    """What a call returned, independent of which request the run's timing gave it."""
    error = span["error"]["type"] if span["error"] else None
    return span["status"], str(span["result"]), error


@pytest.mark.parametrize("build", BUILDS)
def test_same_spans_as_gdb(build, operator, tracer_cmd, tmp_path):
    runs = {backend: traced(operator, tracer_cmd, tmp_path, build, backend)
            for backend in ("gdb", "dlv")}
    for backend, (header, truth, spans) in runs.items():
        assert header["backend"] == backend
        # Every call exactly once, and its request, result, error and panic as it returned.
        assert_every_call_once(truth, spans)
        assert any(c["panic"] for c in truth) and any(c["error"] for c in truth)
        assert any(c["requeue_after_ns"] for c in truth)

    header, _, dlv_spans = runs["dlv"]
    _, _, gdb_spans = runs["gdb"]
    # The two runs' calls are the same (which request meets which outcome depends on timing).
    assert len(dlv_spans) == len(gdb_spans)
    assert Counter(map(outcome, dlv_spans)) == Counter(map(outcome, gdb_spans))
    assert {s["error"]["type"] for s in dlv_spans if s["error"]} == {
        "*errors.errorString", "*fmt.wrapError", "*controllers.RetryableError"}
    values = [n for n in header["notes"] if n.startswith("dlv values: ")]
    assert len(values) == 1 and values[0].startswith("dlv values: " + BUILDS[build]), values
