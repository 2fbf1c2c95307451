"""Every reconcile of a real Go operator, traced by real gdb, against the operator's own record."""

from __future__ import annotations

import signal

import pytest
from helpers import (
    GO_BUILDS,
    assert_every_call_once,
    read_lines,
    run_tracer,
    sample,
    tracer_pid,
    wait_for_header,
    wait_until,
)

KNOBS = [
    "-workers", "4", "-calls", "2000", "-objects", "40",
    "-error-every", "9", "-requeue-every", "13", "-requeue-after-every", "17",
    "-recurse-every", "23", "-panic-every", "101", "-linger",
]


@pytest.mark.parametrize(("build", "registers"), [
    *((build, "ptrace") for build in GO_BUILDS),
    # The agent's fallback, gdb's frame API, on one build.
    ("go1.27/sample-operator-stripped", "frame"),
])
def test_every_call_once_with_its_fields(build, registers, operator, tracer_cmd, tmp_path):
    op = operator(build, *KNOBS)
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--output", str(trace), "--quiet",
                     "--max-stopped", "off", "--backend-option", f"registers={registers}")
    header = wait_for_header(trace, run)
    assert header["binary"]["language"] == "go"
    assert header["probe"] == "controller-runtime"
    assert header["functions"] == [
        "example.com/sample-operator/controllers.(*SampleReconciler).Reconcile"]

    op.start_work()
    done = wait_until(op.done, 120, "the operator to finish its calls")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()

    records = read_lines(trace)
    spans = [r for r in records if r["type"] == "span"]
    end = records[-1]
    assert end["type"] == "end" and end["reason"] == "SIGINT"
    assert end["code_restored"] is True
    truth = op.calls()
    assert len(truth) == done["calls"] >= 2000
    # What the knobs asked for really happened, so the comparison below covers it.
    assert any(c["panic"] for c in truth) and any(c["error"] for c in truth)
    assert {c["error"]["type"] for c in truth if c["error"]} == {
        "*errors.errorString", "*fmt.wrapError", "*controllers.RetryableError"}
    assert any(c["requeue"] for c in truth) and any(c["requeue_after_ns"] for c in truth)

    assert_every_call_once(truth, spans)

    assert tracer_pid(op.pid) == 0
    assert op.stray_signals() == [], "the tracer delivered a signal to the operator"


def test_run_traces_from_the_first_call(tmp_path):
    """`tracer run` starts the operator under the tracer; it exits by itself and the run ends."""
    truth_file = tmp_path / "truth.jsonl"
    trace = tmp_path / "trace.jsonl"
    result = run_tracer(
        "run", "-o", str(trace), "-q", "--max-stopped", "off", "--",
        str(sample("go1.27/sample-operator")),
        "-workers", "4", "-calls", "500", "-error-every", "7", "-requeue-every", "11",
        "-panic-every", "97", "-ground-truth", str(truth_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = read_lines(trace)
    assert records[-1]["reason"] == "target-exited"
    assert records[-1]["target_status"] == "exit code 0"
    truth = [r for r in read_lines(truth_file) if not r.get("done")]
    spans = [r for r in records if r["type"] == "span"]
    assert len(truth) >= 500
    assert_every_call_once(truth, spans)
