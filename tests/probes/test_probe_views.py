"""Where a reconcile's time goes, from a real traced run of the Percona sample: the report's
steps, the live view's steps, the exports (OTLP child spans under their reconcile)."""

from __future__ import annotations

import json

import pytest
from helpers import read_lines, run_tracer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from probe_support import reconciles, step_name, trace_sample

from tracer.exports.otlp import requests
from tracer.exports.source import open_trace
from tracer.front.live.state import LiveState


@pytest.fixture
def percona_trace(operator, tracer_cmd, tmp_path):
    header, spans, truth, _ = trace_sample(operator, tracer_cmd, tmp_path,
                                           "go1.27/psmdb-operator")
    path = next(tmp_path.glob("trace-*.jsonl"))
    return path, spans, truth


def step_totals(truth: list[dict]) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = {}
    for call in truth:
        for step in call["steps"]:
            got = out.setdefault(step["name"], [0, 0])
            got[0] += 1
            got[1] += step["exit_ns"] - step["entry_ns"]
    return {name: (n, total) for name, (n, total) in out.items()}


def test_report_shows_each_steps_calls_and_share(percona_trace):
    path, spans, truth = percona_trace
    result = run_tracer("report", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"]["calls"] == len(truth)  # steps are not counted as reconciles
    [parent] = report["steps"]
    assert parent["function"].endswith("(*ReconcilePerconaServerMongoDB).Reconcile")
    assert parent["calls"] == len(truth)
    true_totals = step_totals(truth)
    got = {step_name(s["function"]): s for s in parent["steps"]}
    assert set(got) == set(true_totals)
    parent_total = sum(s["end_ns"] - s["start_ns"] for s in reconciles(spans))
    for name, (calls, true_ns) in true_totals.items():
        step = got[name]
        assert step["calls"] == calls
        # Spans contain the calls: at least the true time, and inside the parent's time.
        assert step["total_s"] * 1e9 >= true_ns
        assert step["share"] == pytest.approx(step["total_s"] * 1e9 / parent_total)
        assert step["depth"] == (2 if name == "reconcileStatefulSet" else 1)
    direct = sum(s["share"] for s in parent["steps"] if s["depth"] == 1)
    assert parent["in_steps_share"] == pytest.approx(direct) and 0 < direct < 1
    text = run_tracer("report", str(path))
    assert "Steps of ReconcilePerconaServerMongoDB" in text.stdout
    assert "  reconcileStatefulSet" in text.stdout  # nested: indented


def test_live_view_state_counts_steps_apart(percona_trace):
    path, spans, truth = percona_trace
    state = LiveState()
    for span in spans:  # in file order, as the live view receives them
        state.add(span)
    snap = state.snapshot(max(s["end_ns"] for s in spans), {}, None)
    assert list(snap.functions) == [reconciles(spans)[0]["function"]]
    assert snap.spans == len(truth)
    by_name = {step_name(st.function): st for st in snap.steps}
    for name, (calls, _) in step_totals(truth).items():
        assert by_name[name].calls == calls
        assert by_name[name].parent_function == reconciles(spans)[0]["function"]


def test_otlp_steps_are_children_of_their_reconcile(percona_trace):
    path, spans, _ = percona_trace
    got = []
    for _, body in requests(open_trace(str(path))):
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                got.extend(ss.spans)
    assert len(got) == len(spans)
    by_tracer_id = {}
    for span in got:
        attrs = {a.key: a.value for a in span.attributes}
        by_tracer_id[attrs["tracer.span.id"].int_value] = span
    for span in spans:
        mine = by_tracer_id[span["id"]]
        if "parent" not in span:
            assert not mine.parent_span_id
            continue
        parent = by_tracer_id[span["parent"]]
        assert mine.trace_id == parent.trace_id and mine.parent_span_id == parent.span_id


def test_timestamps_export_has_reconcile_starts_only(percona_trace, tmp_path):
    path, spans, truth = percona_trace
    out = tmp_path / "starts.txt"
    result = run_tracer("export", str(path), "--format", "timestamps", "--style", "lines",
                        "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == len(truth)


def test_live_screen_shows_where_the_time_goes(operator, tmp_path):
    """`tracer attach` on a terminal (tmux): the steps table under the functions, with the
    true number of calls of each step once the run is done."""
    import shlex
    import sys

    from helpers import ROOT, wait_for_header, wait_until
    from test_live_view import Tmux, row_numbers

    op = operator("go1.27/psmdb-operator", "-calls", "120", "-linger")
    trace = tmp_path / "trace.jsonl"
    command = " ".join(shlex.quote(a) for a in [
        sys.executable, "-m", "tracer", "attach", str(op.pid), "-o", str(trace)])
    pane = Tmux(tmp_path, 100, 40, f"cd {shlex.quote(str(ROOT))} && {command}; sleep 600")
    try:
        wait_for_header(trace)
        op.start_work()
        wait_until(op.done, 120, "the sample to finish its calls")
        totals = step_totals(op.calls())

        def settled():
            """A whole frame (rich redraws in place) with every step's true count."""
            screen = pane.screen()
            lines = screen.splitlines()
            try:
                rows = {name: row_numbers(screen, ("  " if name == "reconcileStatefulSet"
                                                    else "") + name) for name in totals}
                steps_at = next(i for i, line in enumerate(lines) if line.startswith("step "))
                function_at = next(i for i, line in enumerate(lines)
                                   if line.startswith("(*Reconcile"))
            except (AssertionError, StopIteration):
                return None
            if function_at < steps_at and all(
                    int(rows[n][0]) == c for n, (c, _) in totals.items()):
                return screen
            return None

        screen = wait_until(settled, 30, "the steps table to show every step call")
        assert "probe percona-server-mongodb" in screen
        pane.keys("q")
        wait_until(lambda: read_lines(trace)[-1]["type"] == "end", 30, "the tracer to leave")
    finally:
        pane.end()
