"""Per-poll cost of tracing the real kube-rs operator (samples/kube-rs-operator: kube 5.0.0's
Controller on tokio, built by scripts/build-samples) under gdb and under kernel uprobes,
against a real kube-apiserver.

For each build and each way (untraced, gdb, uprobe), a fresh operator reconciles the same
workload (tests/realrust/operators.py: Widgets created, changed and deleted through the API:
Ok with requeues, the operator's own error, an API error), attached before the workload
starts, and records each reconcile itself. Reported per way, medians over the repeats:

- reconciles the operator recorded in the window, and of them the ones with a span whose
  polls and threads equal the operator's (every one: none lost, none doubled);
- polls, and breakpoint hits per poll (each poll's entry and return, and the drop);
- told cost per hit (the header's `cost_per_hit_ns`, measured at attach with the run's own
  probes) and so the told cost per poll (that times hits per poll);
- the operator's own CPU time per poll, traced minus untraced (every thread's on-CPU time
  from /proc/PID/task/*/schedstat over the workload): a uprobe hit runs in the kernel on the
  operator's thread, so it is all there; a gdb stop is mostly time stopped, not on CPU;
- gdb's handler time per hit (its agent's own share of each stop);
- the operator's median reconcile, first poll to completion (its timers and API calls
  included: the tracer's share is the difference, within the API server's noise).

    python -m bench.kube_rs [--builds release,debug] [--only gdb,uprobe] [--copies N]
                            [--repeat R] [--json build/bench-kube-rs.json]
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "tests"))

from kube.cluster import start_cluster  # noqa: E402
from realrust.operators import (  # noqa: E402
    BUILDS,
    create_namespace,
    default_widgets,
    drive,
    install_crd,
    read_jsonl,
    start_operator,
)

from bench.real_operator import header_of  # noqa: E402

WAYS = ("gdb", "uprobe")
TRACER = [sys.executable, "-m", "tracer"]


def cpu_ns(pid: int) -> int:
    """The process's on-CPU time so far, every live thread's (schedstat: ns)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def exact(truth: list[dict], spans: list[dict]) -> int:
    """Reconciles with a span of their own, same polls and threads, inside its time (the
    test's match, tests/realrust/test_trace_kube_rs.py, without its offset check)."""
    used: set[int] = set()
    found = 0
    for call in truth:
        at = int(call["at"], 16)
        near = [s for s in spans if s["end_ns"] is not None and s["id"] not in used
                and 0 <= at - int(s["future"], 16) < 1 << 16
                and s["start_ns"] <= call["start_ns"] and call["end_ns"] <= s["end_ns"]]
        if near:
            span = min(near, key=lambda s: at - int(s["future"], 16))
            used.add(span["id"])
            found += span["polls"] == call["polls"] and span["threads"] == call["threads"]
    return found


def one_run(cluster, build: str, way: str, copies: int, folder: Path) -> dict:
    namespace = create_namespace(cluster.api_client, f"bench-{os.urandom(4).hex()}")
    op = start_operator(BUILDS[build].binary, cluster.kubeconfig, folder / "truth.jsonl",
                        namespace=namespace)
    tracer = None
    row: dict = {"build": build, "way": way}
    trace = folder / "trace.jsonl"
    try:
        if way != "untraced":
            tracer = subprocess.Popen(
                [*TRACER, "attach", str(op.pid), "-o", str(trace), "--quiet",
                 "--backend", way, "--max-stopped", "off"],
                stdout=subprocess.DEVNULL, stderr=open(folder / "tracer.stderr", "w"))
            header = header_of(trace, timeout=120)
            row["told_hit_us"] = (header.get("cost_per_hit_ns") or 0) / 1000 or None
        opened, cpu0 = time.monotonic_ns(), cpu_ns(op.pid)
        drive(cluster.api_client, namespace, default_widgets("b", copies))
        closed, cpu1 = time.monotonic_ns(), cpu_ns(op.pid)
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            if tracer.wait(120) != 0:
                raise RuntimeError((folder / "tracer.stderr").read_text())
        truth = [r for r in op.records() if opened <= r["start_ns"] and r["end_ns"] <= closed]
    finally:
        if tracer is not None and tracer.poll() is None:
            os.kill(tracer.pid, signal.SIGKILL)
            tracer.wait()
        op.stop()
    polls = sum(r["polls"] for r in truth)
    row.update(reconciles=len(truth), polls=polls, cpu_per_poll_us=(cpu1 - cpu0) / polls / 1000,
               median_ms=statistics.median((r["end_ns"] - r["start_ns"]) / 1e6 for r in truth))
    if tracer is not None:
        records = read_jsonl(trace)
        spans = [r for r in records if r.get("type") == "span"]
        end = records[-1]
        hits = end["pairing"]["hits"]
        traced_polls = sum(s["polls"] for s in spans)
        row.update(exact=exact(truth, spans), hits_per_poll=hits / traced_polls,
                   handler_hit_us=(end.get("agent_handler_ns") or 0) / hits / 1000
                   if way == "gdb" else None)
        if row.get("told_hit_us"):
            row["told_poll_us"] = row["told_hit_us"] * row["hits_per_poll"]
    return row


def summarize(runs: list[dict], base: dict | None) -> dict:
    """Medians over the repeats; CPU per poll beyond the untraced runs'."""
    out = {"build": runs[0]["build"], "way": runs[0]["way"], "runs": len(runs)}
    for key in ("reconciles", "exact", "polls", "hits_per_poll", "told_hit_us",
                "told_poll_us", "handler_hit_us", "cpu_per_poll_us", "median_ms"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    out["all_exact"] = all(r.get("exact") == r["reconciles"] for r in runs) \
        if runs[0]["way"] != "untraced" else None
    if base is not None and out["cpu_per_poll_us"] is not None:
        out["cpu_added_poll_us"] = round(out["cpu_per_poll_us"] - base["cpu_per_poll_us"], 2)
    return out


def print_table(rows: list[dict]) -> None:
    def fmt(value, spec: str = ".1f") -> str:
        return "-" if value is None else format(value, spec)

    print(f"{'build':15} {'way':9} {'calls':>6} {'exact':>6} {'polls':>6} {'hits/poll':>9} "
          f"{'told µs/hit':>11} {'told µs/poll':>12} {'CPU+ µs/poll':>12} "
          f"{'handler µs':>10} {'median ms':>9}")
    for r in rows:
        print(f"{r['build']:15} {r['way']:9} {fmt(r['reconciles'], '.0f'):>6} "
              f"{fmt(r.get('exact'), '.0f'):>6} {fmt(r['polls'], '.0f'):>6} "
              f"{fmt(r.get('hits_per_poll'), '.2f'):>9} {fmt(r.get('told_hit_us')):>11} "
              f"{fmt(r.get('told_poll_us')):>12} {fmt(r.get('cpu_added_poll_us')):>12} "
              f"{fmt(r.get('handler_hit_us')):>10} {fmt(r['median_ms']):>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", default="release,debug")
    parser.add_argument("--only", default=",".join(WAYS), help="ways to trace (untraced runs "
                        "always)")
    parser.add_argument("--copies", type=int, default=2, help="workload copies (6 Widgets "
                        "each, each reconciled about 3 times)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default="build/bench-kube-rs.json")
    args = parser.parse_args()
    ways = ["untraced", *[w for w in args.only.split(",") if w]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-kube-rs-") as tmp:
        cluster = start_cluster(Path(tmp) / "kube")
        try:
            install_crd(cluster.api_client, BUILDS["release"].binary)
            for build in args.builds.split(","):
                base = None
                for way in ways:
                    runs = []
                    for i in range(args.repeat):
                        folder = Path(tmp) / f"{build}-{way}-{i}"
                        folder.mkdir()
                        runs.append(one_run(cluster, build, way, args.copies, folder))
                    row = summarize(runs, base)
                    base = base or row
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            cluster.stop()
    print_table(rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "copies": args.copies,
                                           "repeat": args.repeat,
                                           "load_1min": os.getloadavg()[0]}, indent=2) + "\n")
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
