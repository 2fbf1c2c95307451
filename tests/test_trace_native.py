"""Native code: the C sample's `reconcile`, called from 2 threads, keyed by thread."""

from __future__ import annotations

import signal

from helpers import (
    assert_native_calls_once,
    read_lines,
    sample,
    tracer_pid,
    wait_for_header,
    wait_until,
)


def test_attach_two_threads(operator, tracer_cmd, tmp_path):
    op = operator("c/c-operator", "-threads", "2", "-calls", "2000", "-linger")
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--symbol", "^reconcile$", "-o", str(trace), "-q",
                     "--max-stopped", "off")
    header = wait_for_header(trace, run)
    assert header["binary"]["language"] == "native" and header["binary"]["pie"] is True
    op.start_work()
    wait_until(op.done, 60, "the C operator to finish")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    records = read_lines(trace)
    spans = [r for r in records if r["type"] == "span"]
    truth = op.calls()
    assert len({c["thread"] for c in truth}) == 2
    assert_native_calls_once(truth, spans)
    assert records[-1]["code_restored"] is True
    assert tracer_pid(op.pid) == 0


def test_run_from_first_call(tmp_path):
    """`tracer run` starts the program under the tracer: no call escapes, not even the first."""
    from helpers import run_tracer

    truth_file = tmp_path / "truth.jsonl"
    trace = tmp_path / "trace.jsonl"
    result = run_tracer("run", "--symbol", "^reconcile$", "-o", str(trace), "-q", "--",
                        str(sample("c/c-operator")), "-threads", "2", "-calls", "500",
                        "-ground-truth", str(truth_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = read_lines(trace)
    assert records[-1]["reason"] == "target-exited"
    truth = [r for r in read_lines(truth_file) if not r.get("done")]
    assert_native_calls_once(truth, [r for r in records if r["type"] == "span"])
