"""The kernel-uprobe backend: the same spans as gdb, nothing left behind, killing it harmless."""

from __future__ import annotations

import bisect
import json
import os
import shutil
import signal
import statistics
import time

import pytest
from helpers import (
    GO_BUILDS,
    Operator,
    alive,
    assert_every_call_once,
    assert_native_calls_once,
    calls_per_second,
    check_fields,
    end_process,
    read_lines,
    run_tracer,
    sample,
    tracer_pid,
    wait_for_header,
    wait_until,
)

from tracer.backends.uprobe import placement, tracefs
from tracer.binary.analyze import analyze
from tracer.probes.compile import compile_plan
from tracer.targets.process import altered_code

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="kernel uprobes need root")

KNOBS = [
    "-workers", "4", "-calls", "2000", "-objects", "40",
    "-error-every", "9", "-requeue-every", "13", "-requeue-after-every", "17",
    "-recurse-every", "23", "-panic-every", "101", "-linger",
]


def probes_of(pid: int) -> list[str]:
    root = tracefs.mount_point()
    with open(os.path.join(root, "uprobe_events")) as f:
        mine = [line for line in f if line.startswith(f"p:{tracefs.GROUP_PREFIX}{pid}/")]
    if os.path.isdir(os.path.join(root, "instances", f"{tracefs.GROUP_PREFIX}{pid}")):
        mine.append("instance")
    return mine


def code_as_file(op) -> bool:
    plan = compile_plan(analyze(str(op.binary)))
    return altered_code(op.pid, str(op.binary), plan.breakpoint_addresses(0), 0) == []


def traced_work(op, tracer_cmd, trace, *options: str, backend: str = "uprobe"):
    """Attach, let the operator do all its calls, end the tracer with Ctrl-C; (header, every
    line of the trace, the tracer's run)."""
    run = tracer_cmd("attach", str(op.pid), "--backend", backend, *options, "-o", str(trace),
                     "-q")
    header = wait_for_header(trace, run)
    op.start_work()
    wait_until(op.done, 120, "the operator to finish its calls")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    return header, read_lines(trace), run


@pytest.mark.parametrize("build", [GO_BUILDS[0], GO_BUILDS[1], GO_BUILDS[4]])
def test_same_calls_as_the_ground_truth(build, operator, tracer_cmd, tmp_path):
    op = operator(build, *KNOBS)
    header, records, _ = traced_work(op, tracer_cmd, tmp_path / "trace.jsonl")
    assert header["backend"] == "uprobe" and header["attach_pause_ms"] == 0
    spans = [r for r in records if r["type"] == "span"]
    truth = op.calls()
    assert_every_call_once(truth, spans)
    assert records[-1]["code_restored"] is True
    assert probes_of(op.pid) == [] and code_as_file(op)
    assert tracer_pid(op.pid) == 0 and op.stray_signals() == []


def test_native_threads(operator, tracer_cmd, tmp_path):
    op = operator("c/c-operator", "-threads", "2", "-calls", "2000", "-linger")
    _, records, _ = traced_work(op, tracer_cmd, tmp_path / "trace.jsonl",
                                "--symbol", "^reconcile$")
    spans = [r for r in records if r["type"] == "span"]
    assert_native_calls_once(op.calls(), spans)
    assert probes_of(op.pid) == []


def test_killing_the_tracer_harms_nothing(operator, tracer_cmd, tmp_path):
    """SIGKILL leaves the probes in the kernel: the operator keeps running (each probe costs
    it microseconds, nothing stops it); the next run on it removes them."""
    op = operator("go1.27/sample-operator", "-workers", "4", "-calls", "0", "-rate", "400")
    op.start_work()
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--backend", "uprobe", "-o", str(trace), "-q")
    wait_for_header(trace, run)
    time.sleep(1)
    os.kill(run.proc.pid, signal.SIGKILL)
    run.wait(10)
    assert probes_of(op.pid) != []
    time.sleep(0.5)
    assert alive(op.pid) and calls_per_second(op, 2.0) > 300
    second = tmp_path / "second.jsonl"
    again = tracer_cmd("attach", str(op.pid), "--backend", "uprobe", "-o", str(second), "-q",
                       "--duration", "1")
    assert again.wait(60) == 0, again.stderr()
    assert probes_of(op.pid) == [] and code_as_file(op)
    assert sum(1 for r in read_lines(second) if r["type"] == "span") > 100


def _every_call_once_fast(truth: list[dict], spans: list[dict]) -> None:
    """assert_every_call_once for tens of thousands of calls: each goroutine's calls run one
    after another, so a call's span is the last one started at or before it."""
    assert len(spans) == len(truth), "every call exactly once, nothing more"
    starts: dict[int, list[int]] = {}
    by_goroutine: dict[int, list[dict]] = {}
    for span in sorted(spans, key=lambda s: s["start_ns"]):
        by_goroutine.setdefault(span["goroutine"], []).append(span)
        starts.setdefault(span["goroutine"], []).append(span["start_ns"])
    used: set[int] = set()
    for call in truth:
        i = bisect.bisect_right(starts.get(call["goroutine"], []), call["entry_ns"]) - 1
        assert i >= 0, f"call {call} has no span"
        span = by_goroutine[call["goroutine"]][i]
        assert span["end_ns"] is not None and span["end_ns"] >= call["exit_ns"], \
            f"call {call} is not inside {span}"
        assert span["id"] not in used, f"span {span} holds two calls"
        used.add(span["id"])
        check_fields(call, span)


def test_no_event_lost_at_a_high_rate(operator, tracer_cmd, tmp_path):
    """20,000 reconciles a second on 4 workers: every one recorded with its fields, and the
    kernel's own counters say it lost nothing."""
    op = operator("go1.27/sample-operator", "-workers", "4", "-rate", "20000", "-calls",
                  "60000", "-objects", "40", "-error-every", "9", "-requeue-every", "13",
                  "-linger")
    _, records, run = traced_work(op, tracer_cmd, tmp_path / "trace.jsonl",
                                  "--max-stopped", "off")
    end = records[-1]
    assert end["type"] == "end" and end["hits_dropped"] == 0
    assert not any(end["events_lost"].values()), end["events_lost"]
    assert "events were lost" not in run.stderr()
    truth = op.calls()
    _every_call_once_fast(truth, [r for r in records if r["type"] == "span"])
    assert end["pairing"]["orphan_exits"] == 0 and end["unfinished"] == 0


@pytest.mark.parametrize("backend", ["uprobe", "gdb"])
def test_cost_told_and_durations_corrected(backend, operator, tracer_cmd, tmp_path):
    """The header says what a hit costs (measured at attach) and how; the report gives the
    operator's stopped time and durations with that cost taken out, closer to the operator's
    own clock than the raw ones."""
    op = operator("go1.27/sample-operator", "-workers", "1", "-calls", "800", "-work-us",
                  "200", "-error-every", "7", "-linger")
    trace = tmp_path / "trace.jsonl"
    header, records, _ = traced_work(op, tracer_cmd, trace, "--max-stopped", "off",
                                     backend=backend)
    assert header["cost_per_hit_ns"] > 0 and "bursts" in header["cost_measured"]
    report = json.loads(run_tracer("report", "--json", str(trace)).stdout)
    cost = report["tracer_cost"]
    source = cost["sources"][0]
    hits = records[-1]["pairing"]["hits"]
    assert source["hits"] == hits
    assert source["stopped_s"] == pytest.approx(hits * header["cost_per_hit_ns"] / 1e9)
    (function,) = cost["functions"]
    truth = statistics.median(c["exit_ns"] - c["entry_ns"] for c in op.calls()) / 1e9
    raw, corrected = function["raw"]["p50"], function["corrected"]["p50"]
    assert corrected < raw
    assert abs(corrected - truth) < abs(raw - truth), (raw, corrected, truth)
    text = run_tracer("report", str(trace)).stdout
    assert "operator stopped" in text and "corrected" in text


def test_lost_events_are_never_silent(operator, tracer_cmd, tmp_path):
    """A buffer far too small for the rate: the kernel's own counts of what it could not keep
    are in the end line and said on stderr, and the trace holds fewer calls than were made."""
    op = operator("go1.27/sample-operator", "-workers", "4", "-rate", "20000", "-calls",
                  "20000", "-objects", "40", "-linger")
    _, records, run = traced_work(op, tracer_cmd, tmp_path / "trace.jsonl",
                                  "--backend-option", "buffer-kb=4")
    lost = records[-1]["events_lost"]
    assert lost["overrun"] + lost["dropped"] > 0, lost
    assert "warning: events were lost, spans may be missing" in run.stderr()
    spans = [r for r in records if r["type"] == "span"]
    assert len(spans) < len(op.calls())
    assert probes_of(op.pid) == []


def test_hits_the_kernel_counted_but_never_recorded_are_said(tracer_cmd, tmp_path):
    """Hits of threads outside the event filter are dropped by the kernel without a word in
    its loss counters; the tracer compares the probes' own hit counts (uprobe_profile) with
    what it read, so such a loss is in the end line and on stderr, never silent. The filter
    is narrowed by hand to the operator's first thread while it runs (a copy of the binary,
    so no other process's hits count)."""
    binary = tmp_path / "sample-operator"
    shutil.copy(sample("go1.27/sample-operator"), binary)
    op = Operator(binary, tmp_path / "truth.jsonl", ["-workers", "4", "-rate", "2000",
                                                     "-calls", "4000", "-objects", "40",
                                                     "-linger"])
    try:
        trace = tmp_path / "trace.jsonl"
        run = tracer_cmd("attach", str(op.pid), "--backend", "uprobe", "-o", str(trace), "-q")
        wait_for_header(trace, run)
        root = tracefs.mount_point()
        tracefs.write(os.path.join(root, "instances", f"{tracefs.GROUP_PREFIX}{op.pid}",
                                   "set_event_pid"), str(op.pid))
        op.start_work()
        wait_until(op.done, 120, "the operator to finish its calls")
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(60) == 0, run.stderr()
        records = read_lines(trace)
        lost = records[-1]["events_lost"]
        whole = [r for r in records if r["type"] == "span" and r["status"] != "unfinished"]
        missing = len(op.calls()) - len(whole)  # each lost at least one of its hits
        assert missing > 0 and lost["unrecorded"] >= missing, (lost, missing)
        assert "warning: events were lost, spans may be missing" in run.stderr()
    finally:
        end_process(op.proc)


@pytest.mark.parametrize("build", [GO_BUILDS[0], GO_BUILDS[2]])
def test_entry_at_the_stack_check(build, operator, tracer_cmd, tmp_path):
    """Go 1.19 frames start with `sub rsp` (single-stepped); the entry probe sits on the stack
    check's jbe instead (emulated). Calls made on a fresh small stack make Reconcile's own
    check send it to morestack and run it from its first instruction again: still one span
    each, the extra entries counted, not traced."""
    info = analyze(str(sample(build)))
    plan = compile_plan(info)
    entry = next(p for p in plan.points if p.role == "entry")
    where = placement.place(info, entry, True)
    assert where.branch and where.addr < entry.addr
    op = operator(build, "-workers", "2", "-calls", "600", "-fresh-stack-every", "1",
                  "-error-every", "7", "-linger")
    _, records, _ = traced_work(op, tracer_cmd, tmp_path / "trace.jsonl")
    assert_every_call_once(op.calls(), [r for r in records if r["type"] == "span"])
    assert records[-1]["entries_at_stack_growth"] > 0


@pytest.mark.parametrize("build", ["go1.27/sample-operator", "c/c-operator"])
def test_run_from_the_first_call(build, tmp_path):
    """`tracer run --backend uprobe`: the probes are on the program before it execs, so its
    very first call is recorded; it exits by itself and the run ends with its status."""
    truth_file = tmp_path / "truth.jsonl"
    trace = tmp_path / "trace.jsonl"
    args = (["-workers", "4", "-calls", "500", "-error-every", "7", "-panic-every", "97"]
            if build.startswith("go") else ["-threads", "2", "-calls", "500"])
    symbol = [] if build.startswith("go") else ["--symbol", "^reconcile$"]
    result = run_tracer("run", "--backend", "uprobe", *symbol, "-o", str(trace), "-q", "--",
                        str(sample(build)), *args, "-ground-truth", str(truth_file),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = read_lines(trace)
    assert records[0]["backend"] == "uprobe" and records[0]["attach_pause_ms"] == 0
    assert records[-1]["reason"] == "target-exited"
    assert records[-1]["target_status"] == "exit code 0"
    truth = [r for r in read_lines(truth_file) if not r.get("done")]
    spans = [r for r in records if r["type"] == "span"]
    assert len(truth) >= 500
    if build.startswith("go"):
        assert_every_call_once(truth, spans)
    else:
        assert_native_calls_once(truth, spans)
    assert not any(records[-1]["events_lost"].values()), records[-1]["events_lost"]


def test_pause_budget_counts_the_kernel_handler(operator, tracer_cmd, tmp_path):
    """Nothing stops with uprobes, but every hit holds one of the operator's threads in the
    kernel's handler for about the cost told at attach. Past --max-stopped the tracer first
    drops names, then leaves, and the share it reports is the operator's own call rate times
    two hits times that cost."""
    op = operator("go1.27/sample-operator", "-workers", "4", "-calls", "0", "-rate", "4000",
                  "-work-us", "50", "-objects", "40")
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--backend", "uprobe", "-o", str(trace), "-q",
                     "--max-stopped", "1%", "--budget-window", "1")
    header = wait_for_header(trace, run)
    op.start_work()
    assert run.wait(60) == 1, run.stderr()
    records = read_lines(trace)
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "pause-budget"
    budget = [r for r in records if r["type"] == "budget"]
    assert [b["action"] for b in budget] == ["degrade", "detach"], budget
    assert "again: detaching to spare the operator" in run.stderr()
    assert probes_of(op.pid) == [] and alive(op.pid)
    # The operator's own rate over the traced time, as its ground truth has it.
    first = records[0]["clock"]["monotonic_ns"]
    last = budget[-1]["clock"]["monotonic_ns"]
    truth = [c for c in op.calls() if first <= c["entry_ns"] <= last]
    rate = len(truth) / ((last - first) / 1e9)
    expected = rate * 2 * header["cost_per_hit_ns"] / 1e9
    for line in budget:
        assert 0.6 * expected < line["share"] < 1.5 * expected, (line, expected, rate)
    # Once degraded, names are no longer read.
    degraded = budget[0]["clock"]["monotonic_ns"]
    spans = [r for r in records if r["type"] == "span"]
    assert spans[0]["request"] is not None
    later = [r for r in spans if r["start_ns"] > degraded + 50e6]
    assert later and all(r["request"] is None for r in later), later[:2]
