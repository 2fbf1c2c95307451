"""The tracer on the real kube-rs operator (samples/kube-rs-operator: kube 5.0.0's Controller
on tokio), with no probe named, under gdb and under kernel uprobes, against a real API
server: every reconcile the operator records in the window is in the trace exactly once, with
its poll count and the thread of each poll; Ok/Err and the requeue where the header says they
are read (DWARF), and nothing where it says they are not; no span for error_policy or any
other closure. Ground truth: the operator's own record of each reconcile future
(operators.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import interrupt, tracer_pid, wait_for_header, wait_until

from tracer.binary.analyze import analyze
from tracer.probes.compile import compile_plan
from tracer.targets.process import altered_code, load_bias

from .operators import (
    BUILDS,
    RECONCILE,
    Widget,
    create,
    default_widgets,
    drive,
    expected,
    patch_spec,
)

# Recorded (the ground truth's wrapper) lies inside the reconcile's future, a few KB at most
# from the start of the future the tracer keys the span by (kube-runtime's Instrumented).
NEAR = 1 << 16


BACKENDS = ["gdb", pytest.param("uprobe", marks=pytest.mark.skipif(
    os.geteuid() != 0, reason="kernel uprobes need root"))]


def attached(build, backend, rust_operator, rust_namespace, tracer_cmd, tmp_path):
    """A fresh operator of BUILD, traced by BACKEND into tmp_path/trace.jsonl (every reconcile
    wanted: no pause budget): (operator, trace, run, header)."""
    op = rust_operator(build, rust_namespace)
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--output", str(trace), "--quiet",
                     "--max-stopped", "off", "--backend", backend)
    return op, trace, run, wait_for_header(trace, run)


def traced_workload(build, rust_operator, rust_namespace, rust_cluster, tracer_cmd, tmp_path,
                    backend="gdb"):
    op, trace, run, header = attached(build, backend, rust_operator, rust_namespace, tracer_cmd,
                                      tmp_path)
    opened = time.monotonic_ns()
    widgets = default_widgets()
    drive(rust_cluster.api_client, rust_namespace, widgets)
    closed = time.monotonic_ns()
    records = interrupt(run, trace)
    end = records[-1]
    truth = [r for r in op.records() if opened <= r["start_ns"] and r["end_ns"] <= closed]
    spans = [r for r in records if r["type"] == "span"]
    return op, widgets, truth, spans, header, end, opened, closed


def match(truth: list[dict], spans: list[dict]) -> dict[int, dict]:
    """Each true reconcile to the span whose future holds it and whose time holds its time.
    Recorded lies inside the future at one fixed offset (the future's layout is the same for
    every reconcile); tasks are separate allocations, so the nearest future below Recorded is
    its own: every match must then show the same offset, and no span may hold two. A
    cancelled reconcile's end is Recorded's drop, inside the future's: its span ends at the
    future's drop, between its first poll and that."""
    matched: dict[int, dict] = {}
    offsets = set()
    for call in truth:
        at = int(call["at"], 16)
        found = [s for s in spans if s["end_ns"] is not None
                 and 0 <= at - int(s["future"], 16) < NEAR
                 and s["start_ns"] <= call["start_ns"]
                 and (call["end_ns"] <= s["end_ns"] or call["status"] == "cancelled"
                      and call["start_ns"] <= s["end_ns"] <= call["end_ns"])]
        assert found, f"{call} is in no span"
        span = min(found, key=lambda s: at - int(s["future"], 16))
        offsets.add(at - int(span["future"], 16))
        matched[call["seq"]] = span
    assert len(offsets) <= 1, f"Recorded at different offsets in the futures: {offsets}"
    assert len({s["id"] for s in matched.values()}) == len(truth), "a span holds two reconciles"
    return matched


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build", list(BUILDS))
def test_every_reconcile_once(build, backend, rust_operator, rust_namespace, rust_cluster,
                              tracer_cmd, tmp_path):
    op, widgets, truth, spans, header, end, opened, closed = traced_workload(
        build, rust_operator, rust_namespace, rust_cluster, tracer_cmd, tmp_path, backend)
    assert header["backend"] == backend, header
    assert header["probe"] == "kube-rs", header
    assert header["functions"] == [RECONCILE], "error_policy or another closure is traced"
    assert header["binary"]["dwarf"] == BUILDS[build].dwarf
    by_name = {w.name: w for w in widgets}
    assert len(truth) >= 2 * len(widgets), "the workload made too few reconciles"
    assert {r["status"] for r in truth} >= {"ok", "error"}
    matched = match(truth, spans)
    # Every span that began and ended inside the window is a reconcile of the ground truth.
    inside = [s for s in spans if opened <= s["start_ns"] and s["end_ns"] is not None
              and s["end_ns"] <= closed]
    assert {s["id"] for s in inside} <= {s["id"] for s in matched.values()}, \
        "a span that is no reconcile"
    assert {s["function"] for s in spans} == {RECONCILE}
    reads_result = any("Ok/Err read from DWARF" in n for n in header["notes"])
    assert reads_result == BUILDS[build].dwarf, header["notes"]
    reads_state = any("status completed, cancelled" in n and "state at +0xb2" in n
                      for n in header["notes"])
    assert reads_state == (not BUILDS[build].dwarf), header["notes"]
    moved = 0
    for call in truth:
        span = matched[call["seq"]]
        assert span["polls"] == call["polls"], (call, span)
        assert span["threads"] == call["threads"], (call, span)
        moved += len(set(call["threads"])) > 1
        assert abs(span["cpu_ns"] + span["await_ns"] - span["duration_ns"]) <= 5_000
        want = expected(by_name[call["name"]], call["namespace"])
        assert call["status"] == want["status"] and call["error_variant"] == want["error_variant"]
        if reads_result:
            assert span["request"] == {"namespace": call["namespace"], "name": call["name"]}
            if call["status"] == "ok":
                assert span["status"] == "ok"
                assert span["result"] == {"ok": True, "requeue_after_ns": call["requeue_ns"]}
                assert span["error"] is None
            else:
                assert span["status"] == "error" and span["result"] is None
                assert span["error"]["type"] == \
                    f"kube_rs_operator::Error::{call['error_variant']}"
                # What Display prints is code of thiserror's: not given (never a guess).
                assert span["error"]["message"] is None
        else:
            # Ok/Err is not read, but the wrapper's state says the future completed.
            assert span["status"] == "completed", span
            assert span["result"] is None and span["error"] is None
            assert span["request"] is None
    assert moved, "no reconcile moved between threads: the test proves nothing about it"
    assert end["pairing"]["orphan_exits"] == 0
    assert end["code_restored"] is True
    assert_untouched(op)


def assert_untouched(op) -> None:
    assert op.proc.poll() is None, "the operator died"
    wait_until(lambda: tracer_pid(op.pid) == 0, 15, "TracerPid to be 0")
    info = analyze(str(op.binary))
    plan = compile_plan(info)
    bias = load_bias(op.pid, str(op.binary), info.pie)
    assert altered_code(op.pid, str(op.binary), plan.breakpoint_addresses(0), bias) == []


SLOW_MS = 600_000  # a timer no test waits for: the reconcile is surely at its await


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build", list(BUILDS))
def test_aborted_reconciles(build, backend, rust_operator, rust_namespace, rust_cluster,
                            tracer_cmd, tmp_path):
    """kube-runtime aborts a reconcile when its task's JoinHandle is dropped: the operator
    drops its Controller on SIGUSR1 (a leader lease lost) while two reconciles await a long
    timer, and starts a new one. The operator's own Recorded sees each aborted future dropped
    (cancelled) and each other one complete; the span's status says the same: cancelled, and
    completed (release: the wrapper's state read at its drop or after its poll) or ok/error
    (debug: DWARF)."""
    api = rust_cluster.api_client
    op, trace, run, header = attached(build, backend, rust_operator, rust_namespace, tracer_cmd,
                                      tmp_path)
    opened = time.monotonic_ns()
    slow = [Widget(f"a{i}-slow", delay_ms=SLOW_MS) for i in range(3)]
    quick = [Widget("a-ok"), Widget("a-quick", delay_ms=0), Widget("a-fail", fail="quota")]
    for w in slow + quick:
        create(api, rust_namespace, w)
    names = {w.name for w in slow + quick}
    wait_until(lambda: {r["name"] for r in op.started()} >= {w.name for w in slow}
               and {r["name"] for r in op.records()} >= {w.name for w in quick}, 60,
               "the slow reconciles to start and the quick ones to finish")
    # Their next reconcile (the new Controller's) takes no time.
    for w in slow:
        patch_spec(api, rust_namespace, w.name, {"delayMs": 0})
    os.kill(op.pid, signal.SIGUSR1)
    wait_until(lambda: op.restarts(), 30, "the operator to restart its Controller")
    restarted = op.restarts()[0]["ts_ns"]
    wait_until(lambda: {r["name"] for r in op.records() if r["status"] == "cancelled"}
               >= {w.name for w in slow}
               and {r["name"] for r in op.records() if r["start_ns"] > restarted
                    and r["status"] != "cancelled"} >= names, 60,
               "the slow reconciles aborted and every Widget reconciled again")
    closed = time.monotonic_ns()
    records = interrupt(run, trace)
    end = records[-1]
    spans = [r for r in records if r["type"] == "span"]
    truth = [r for r in op.records() if opened <= r["start_ns"] and r["end_ns"] <= closed]
    aborted = [r for r in truth if r["status"] == "cancelled"]
    # The slow ones at least (a quick one reconciled again, for its ConfigMap's event, may be
    # running too when the Controller goes).
    assert {r["name"] for r in aborted} >= {w.name for w in slow}, aborted
    assert all(r["end_ns"] > restarted for r in aborted)
    matched = match(truth, spans)
    dwarf = BUILDS[build].dwarf
    for call in truth:
        span = matched[call["seq"]]
        assert span["polls"] == call["polls"] and span["threads"] == call["threads"], \
            (call, span)
        if call["status"] == "cancelled":
            want = "cancelled"
        else:
            want = call["status"] if dwarf else "completed"
        assert span["status"] == want, (call, span)
        if want == "cancelled":
            assert span["result"] is None and span["error"] is None
            # Ended at the future's drop: after its last poll, before Recorded's drop.
            assert span["end_ns"] <= call["end_ns"]
    inside = [s for s in spans if opened <= s["start_ns"] and s["end_ns"] is not None
              and s["end_ns"] <= closed]
    assert {s["id"] for s in inside} <= {s["id"] for s in matched.values()}
    assert header["backend"] == backend
    assert end["pairing"]["orphan_exits"] == 0
    if backend == "gdb":
        # gdb reads the state after each poll: a completed future's span ends at the poll
        # that left it Returned, so only the aborted ones are ended by their drop.
        assert end["pairing"]["ended_by_marker"] == \
            sum(s["status"] == "cancelled" for s in spans)
    print(f"{build}/{backend}: {len(aborted)} aborted, {len(truth) - len(aborted)} completed")
    assert end["code_restored"] is True
    assert_untouched(op)
