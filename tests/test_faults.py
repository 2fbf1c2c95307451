"""Faults around a traced operator: it execs, forks, churns threads, is stopped, is traced
twice, the disk fills up, the machine is busy. Whatever happens, it keeps running untraced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import (
    alive,
    assert_every_call_once,
    read_lines,
    run_tracer,
    sample,
    tracer_pid,
    wait_for_header,
    wait_until,
)

from tracer.binary.analyze import analyze
from tracer.probes.compile import compile_plan
from tracer.targets.process import altered_code

BUILD = "go1.27/sample-operator"


def sample_bytes(rel: str) -> bytes:
    return sample(rel).read_bytes()


def breakpoints_left(op) -> list[int]:
    plan = compile_plan(analyze(str(op.binary)))
    return altered_code(op.pid, str(op.binary), plan.breakpoint_addresses(0), 0)


def traced_run(op, tracer_cmd, tmp_path, *extra: str):
    trace = tmp_path / "trace.jsonl"
    # Decoding is what these tests check: no pause budget dropping it on a slow run.
    run = tracer_cmd("attach", str(op.pid), "-o", str(trace), "-q", "--max-stopped", "off",
                     *extra)
    wait_for_header(trace, run)
    return trace, run


def test_operator_execs_itself(operator, tracer_cmd, tmp_path):
    """After an exec the plan's addresses are meaningless; gdb would re-insert breakpoints
    at them in the new program. The tracer stops at the exec, removes them and leaves."""
    op = operator(BUILD, "-workers", "2", "-calls", "200", "-then-exec")
    trace, run = traced_run(op, tracer_cmd, tmp_path)
    op.start_work()
    assert run.wait(60) == 0, run.stderr()
    end = read_lines(trace)[-1]
    assert end["type"] == "end" and end["reason"] == "target-exec"
    # The same PID now runs the binary again (-calls 1 -linger): untraced, no int3 anywhere.
    wait_until(lambda: b"-linger" in open(f"/proc/{op.pid}/cmdline", "rb").read(), 10,
               "the exec'd program")
    time.sleep(0.5)
    assert alive(op.pid) and tracer_pid(op.pid) == 0
    assert breakpoints_left(op) == []
    spans = [r for r in read_lines(trace) if r["type"] == "span"]
    assert len(spans) == len(op.calls())


def test_forks_and_thread_churn_while_traced(operator, tracer_cmd, tmp_path):
    op = operator(BUILD, "-workers", "4", "-calls", "800", "-error-every", "9",
                  "-spawn-every", "40", "-thread-churn-every", "25", "-linger")
    trace, run = traced_run(op, tracer_cmd, tmp_path)
    op.start_work()
    wait_until(op.done, 120, "the operator to finish")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    spans = [r for r in read_lines(trace) if r["type"] == "span"]
    truth = op.calls()
    assert_every_call_once(truth, spans)
    assert tracer_pid(op.pid) == 0 and breakpoints_left(op) == []
    # Its own children's SIGCHLD is the operator's business; nothing else may arrive.
    assert [s for s in op.stray_signals() if s != "signal: child exited"] == []


def test_a_stopped_operator_is_left_stopped(operator, tmp_path):
    op = operator(BUILD, "-linger")
    os.kill(op.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "T (stopped)" in open(f"/proc/{op.pid}/status").read(), 5, "stop")
        result = run_tracer("attach", str(op.pid), cwd=tmp_path)
        assert result.returncode == 2
        assert "is stopped" in result.stderr and "kill -CONT" in result.stderr
        assert "T (stopped)" in open(f"/proc/{op.pid}/status").read()
    finally:
        os.kill(op.pid, signal.SIGCONT)


def test_a_second_tracer_is_told_who_traces(operator, tracer_cmd, tmp_path):
    op = operator(BUILD, "-linger")
    trace, run = traced_run(op, tracer_cmd, tmp_path)
    gdb = tracer_pid(op.pid)
    second = run_tracer("attach", str(op.pid), "-o", str(tmp_path / "second.jsonl"))
    assert second.returncode == 2
    assert f"already traced by PID {gdb} (gdb)" in second.stderr
    assert not (tmp_path / "second.jsonl").exists()
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(30) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_stops_recording_and_detaches(operator, tracer_cmd, tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tracer-test", str(disk)],
                   check=True)
    try:
        op = operator(BUILD, "-workers", "4", "-calls", "0", "-rate", "500", "-linger")
        op.start_work()
        trace = disk / "trace.jsonl"
        run = tracer_cmd("attach", str(op.pid), "-o", str(trace), "-q")
        assert run.wait(60) == 1
        assert "cannot write the trace file (No space left on device)" in run.stderr()
        assert "ended (write-failed)" in run.stderr()
        assert alive(op.pid) and tracer_pid(op.pid) == 0 and breakpoints_left(op) == []
        # What did get written reads back up to its last whole line.
        from tracer.session.tracefile import read_trace

        kept = read_trace(str(trace))
        assert kept.header is not None and len(kept.spans) > 50
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_every_call_with_the_machine_busy(operator, tracer_cmd, tmp_path):
    """Both cores busy with other work: slower, but still every call exactly once."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        op = operator(BUILD, "-workers", "4", "-calls", "600", "-error-every", "7",
                      "-requeue-every", "11", "-panic-every", "97", "-recurse-every", "23",
                      "-linger")
        trace, run = traced_run(op, tracer_cmd, tmp_path)
        op.start_work()
        wait_until(op.done, 180, "the operator to finish")
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(60) == 0, run.stderr()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    spans = [r for r in read_lines(trace) if r["type"] == "span"]
    truth = op.calls()
    assert_every_call_once(truth, spans)


def test_pause_budget_degrades_then_detaches(operator, tracer_cmd, tmp_path):
    """An operator calling Reconcile flat out, a 1% budget over 1 s windows: the first window
    over budget drops the names and messages, the second detaches, and the operator's rate
    comes back."""
    op = operator(BUILD, "-workers", "4", "-calls", "0", "-objects", "20")
    op.start_work()
    time.sleep(0.5)

    def rate(seconds: float = 1.0) -> float:
        before = op.truth.read_bytes().count(b"\n")
        time.sleep(seconds)
        return (op.truth.read_bytes().count(b"\n") - before) / seconds

    untraced = rate()
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "-o", str(trace), "-q", "--max-stopped", "1%",
                     "--budget-window", "1")
    wait_for_header(trace, run)
    traced = rate()
    assert run.wait(30) == 1
    assert "recording times and types only" in run.stderr()
    assert "detaching to spare the operator" in run.stderr()
    records = read_lines(trace)
    budget = [r for r in records if r["type"] == "budget"]
    assert [b["action"] for b in budget] == ["degrade", "detach"]
    assert all(b["share"] > 0.01 for b in budget)
    assert records[-1]["reason"] == "pause-budget" and records[-1]["code_restored"] is True
    degraded_at = budget[0]["clock"]["monotonic_ns"]
    late = [s for s in records if s["type"] == "span" and s["start_ns"] > degraded_at + 10**8]
    assert late and all(s["request"] is None for s in late)
    assert tracer_pid(op.pid) == 0 and breakpoints_left(op) == []
    recovered = rate()
    assert recovered > 2 * traced and recovered > 0.5 * untraced, (untraced, traced, recovered)


def test_calls_in_flight_at_detach_are_written_unfinished(operator, tracer_cmd, tmp_path):
    op = operator("c/c-operator", "-threads", "2", "-calls", "0", "-work-us", "300000")
    op.start_work()
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--symbol", "^reconcile$", "-o", str(trace), "-q")
    wait_for_header(trace, run)
    time.sleep(1.2)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(30) == 0, run.stderr()
    records = read_lines(trace)
    spans = [r for r in records if r["type"] == "span"]
    unfinished = [s for s in spans if s["status"] == "unfinished"]
    # Two threads each inside a 0.3 s call at almost any instant.
    assert 1 <= len(unfinished) <= 2
    assert all(s["end_ns"] is None and s["duration_ns"] is None for s in unfinished)
    assert records[-1]["unfinished"] == len(unfinished)
    assert any(s["status"] == "ok" for s in spans)


def test_hostile_paths_are_never_pasted_into_gdb_commands(tmp_path):
    """A program path with spaces, quotes, backticks, `$(...)` and non-ASCII: `tracer run`
    starts it, and gdb, which is handed paths only as MI strings, reads it as a file name."""
    from tracer.backends.gdb.backend import find_gdb
    from tracer.backends.gdb.mi import MIConnection, mi_quote

    folder = tmp_path / 'we"ird $(touch pwned); jürgen\\'
    folder.mkdir()
    program = folder / "op `x` 'y'"
    program.write_bytes(sample_bytes("c/c-operator"))
    program.chmod(0o755)
    trace = tmp_path / "trace.jsonl"
    result = run_tracer("run", "--symbol", "^reconcile$", "-o", str(trace), "-q", "--",
                        str(program), "-threads", "2", "-calls", "50", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sum(1 for r in read_lines(trace) if r["type"] == "span") == 50

    mi = MIConnection(find_gdb())
    try:
        mi.send("-file-exec-and-symbols " + mi_quote(str(program)))
        files = "".join(mi.console("info files").console)
        assert str(program) in files
    finally:
        mi.close()
    assert not (tmp_path / "pwned").exists() and not (folder / "pwned").exists()
