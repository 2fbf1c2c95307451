"""Cost per breakpoint hit of tracing the Rust sample's async reconcile (gdb, kube-rs probe),
and its poll counts.

Method: the Rust sample runs N reconciles on one executor worker, many in flight (so the
worker is never idle: a sleeping future's timer runs while others are polled), and its
executor records every poll. The run's span (first poll to last completion) traced minus
untraced, divided by the breakpoint hits (each poll's entry and RET, each drop), is the cost
of one hit as the operator feels it. Also the agent's own handler time per hit. Writes
build/bench-rust-async.json.

    python -m bench.rust_async [--calls N] [--work-us US] [--repeat R]
"""

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDS = ["rust/rust-operator-debug", "rust/rust-operator-release",
          "rust/rust-operator-instrumented"]

KNOBS: list[str] = []


def end(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def rows(path: Path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def run(binary: Path, tmp: Path, traced: bool) -> dict:
    truth, trace = tmp / "truth.jsonl", tmp / "trace.jsonl"
    for p in (truth, trace):
        p.unlink(missing_ok=True)
    op = subprocess.Popen([str(binary), "-wait-signal", "-ground-truth", str(truth), *KNOBS],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    tracer = None
    try:
        assert op.stdout.readline().startswith("ready")
        if traced:
            tracer = subprocess.Popen(
                [sys.executable, "-m", "tracer", "attach", str(op.pid), "--probe", "kube-rs",
                 "-o", str(trace), "-q", "--max-stopped", "off"], stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while not (trace.exists() and '"header"' in trace.read_text()):
                assert tracer.poll() is None and time.monotonic() < deadline, "no header"
                time.sleep(0.05)
        os.kill(op.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 600
        while not any(r.get("done") for r in rows(truth)):
            assert time.monotonic() < deadline, "the operator did not finish"
            time.sleep(0.05)
        result = {}
        if tracer is not None:
            end(tracer, signal.SIGINT)
            records = rows(trace)
            tail = records[-1]
            spans = [r for r in records if r.get("type") == "span"]
            result = {"hits": tail["pairing"]["hits"], "spans": len(spans),
                      "handler_ns": tail["agent_handler_ns"],
                      "polls": collections.Counter(s["polls"] for s in spans)}
        calls = [r for r in rows(truth) if not r.get("done")]
        result["span_ns"] = max(c["end_ns"] for c in calls) - min(c["start_ns"] for c in calls)
        result["calls"] = len(calls)
        result["truth_polls"] = collections.Counter(c["polls"] for c in calls)
        result["moved"] = sum(len(set(c["threads"])) > 1 for c in calls)
        return result
    finally:
        if tracer is not None:
            end(tracer, signal.SIGINT)
        end(op)


def main(argv: list[str] | None = None) -> None:
    global KNOBS
    parser = argparse.ArgumentParser(prog="scripts/bench-rust-async")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--work-us", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    KNOBS = ["-workers", "1", "-calls", str(args.calls), "-work-us", str(args.work_us),
             "-sleep-us", "200", "-error-every", "7", "-linger"]
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for build in BUILDS:
            binary = ROOT / "build" / "samples" / build
            per_hit, handler = [], []
            for _ in range(args.repeat):
                base = run(binary, Path(tmp), False)
                traced = run(binary, Path(tmp), True)
                assert traced["spans"] == traced["calls"], traced
                per_hit.append((traced["span_ns"] - base["span_ns"]) / traced["hits"] / 1000)
                handler.append(traced["handler_ns"] / traced["hits"] / 1000)
            row = {"build": build, "calls": traced["calls"], "hits": traced["hits"],
                   "hits_per_reconcile": round(traced["hits"] / traced["calls"], 2),
                   "polls": dict(sorted(traced["polls"].items())),
                   "truth_polls": dict(sorted(traced["truth_polls"].items())),
                   "per_hit_us_median": round(statistics.median(per_hit), 1),
                   "per_hit_us": [round(x, 1) for x in per_hit],
                   "handler_us_median": round(statistics.median(handler), 1)}
            report.append(row)
            print(json.dumps(row))
    out = ROOT / "build" / "bench-rust-async.json"
    out.write_text(json.dumps({"args": vars(args), "results": report}, indent=1))
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
