"""Tracing a probe sample with the real tracer: ground truth against spans."""

from __future__ import annotations

import signal

from helpers import ROOT, read_lines, wait_for_header, wait_until

PROBES = ROOT / "probes"


def trace_sample(operator, tracer_cmd, tmp_path, build: str, *tracer_args: str,
                 knobs: tuple[str, ...] = ("-calls", "200")) -> tuple[dict, list[dict],
                                                                        list[dict], str]:
    """Start a sample parked, attach the tracer, run its calls, detach. Returns the header,
    the spans, the ground truth and the tracer's stderr."""
    op = operator(build, *knobs, "-linger")
    trace = tmp_path / f"trace-{op.pid}.jsonl"
    run = tracer_cmd("attach", str(op.pid), "-o", str(trace), "-q", "--max-stopped", "off",
                     *tracer_args)
    header = wait_for_header(trace, run)
    op.start_work()
    wait_until(op.done, 120, "the sample to finish its calls")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    records = read_lines(trace)
    assert records[-1]["type"] == "end" and records[-1]["code_restored"] is True
    spans = [r for r in records if r["type"] == "span"]
    return header, spans, op.calls(), run.stderr()


def reconciles(spans: list[dict]) -> list[dict]:
    return [s for s in spans if "parent" not in s]


def step_name(function: str) -> str:
    return function.rsplit(".", 1)[-1]


def assert_steps(truth: list[dict], spans: list[dict], matched: dict[int, dict]) -> None:
    """Each true call's steps are the child spans of its reconcile span: same names in the
    same order, same depth, each containing its true step and inside its parent."""
    children: dict[int, list[dict]] = {}
    for span in spans:
        if "parent" in span:
            children.setdefault(span["parent"], []).append(span)
    for call in truth:
        parent = matched[call["seq"]]
        mine = sorted(children.pop(parent["id"], []), key=lambda s: s["start_ns"])
        assert [(step_name(s["function"]), s["depth"]) for s in mine] == [
            (step["name"], step["depth"]) for step in call["steps"]], call
        for span, step in zip(mine, call["steps"], strict=True):
            assert span["goroutine"] == call["goroutine"]
            assert span["start_ns"] <= step["entry_ns"] and span["end_ns"] >= step["exit_ns"]
            assert parent["start_ns"] <= span["start_ns"] and span["end_ns"] <= parent["end_ns"]
            assert span["status"] == "ok"
    assert not children, "child spans of no true call"
