"""The tracer's cost on a real controller-runtime operator (samples/cr-operator, built by
scripts/build-samples) against a real kube-apiserver, beside the in-house sample's figures.

For each build and each way to run it (untraced, then traced with gdb, uprobes and Delve),
a fresh operator reconciles the same workload (tests/realops/operators.py: every result
field and error kind, created, changed and deleted through the API) and records each
reconcile's CLOCK_MONOTONIC entry and exit itself. Reported per run:

- the reconciles the operator recorded, and the spans in the trace (equal: none lost);
- the median and p90 of the operator's own reconcile durations (taken inside Reconcile, so
  they do not include the breakpoints' stops, which fall outside its own clock reads);
- the cost per hit the tracer measured before the attach with the run's own settings on the
  operator's entry instruction, and wrote in the header (gdb, uprobes; Delve has none);
- the attach pause (header: the operator stopped from the first stop to the armed
  breakpoints; kernel uprobes stop nothing).

    python -m bench.real_operator [--builds B,...] [--only gdb,uprobe,dlv] [--copies N]
                                  [--repeat R] [--json build/bench-real.json]
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
from realops.operators import (  # noqa: E402
    CR_BUILDS,
    create_namespace,
    default_plan,
    drive_workload,
    install_crd,
    start_operator,
)

WAYS = ("gdb", "uprobe", "dlv")
TRACER = [sys.executable, "-m", "tracer"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def header_of(trace: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if trace.exists():
            text = trace.read_text()
            first = text.split("\n", 1)[0]
            if text.count("\n") and first:
                return json.loads(first)
        time.sleep(0.05)
    raise RuntimeError(f"no trace header in {trace} after {timeout} s")


def one_run(cluster, build: str, way: str, copies: int, folder: Path) -> dict:
    namespace = create_namespace(cluster.api_client, f"bench-{os.urandom(4).hex()}")
    op = start_operator(CR_BUILDS[build].binary, cluster.kubeconfig, folder / "truth.jsonl",
                        namespace=namespace, leader_namespace=namespace)
    tracer = None
    row: dict = {"build": build, "way": way}
    try:
        if way != "untraced":
            trace = folder / "trace.jsonl"
            tracer = subprocess.Popen(
                [*TRACER, "attach", str(op.pid), "-o", str(trace), "--quiet", "--force",
                 "--backend", way, "--max-stopped", "off"],
                stdout=subprocess.DEVNULL, stderr=open(folder / "tracer.stderr", "w"))
            header = header_of(trace)
            row["attach_pause_ms"] = header.get("attach_pause_ms")
            row["told_cost_us"] = (header.get("cost_per_hit_ns") or 0) / 1000 or None
        drive_workload(cluster.api_client, namespace, operator=op,
                       plan=default_plan("b", copies=copies),
                       has_priority=CR_BUILDS[build].has_priority)
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            if tracer.wait(60) != 0:
                raise RuntimeError((folder / "tracer.stderr").read_text())
        records = op.records()
        durations = [(r["exit_ns"] - r["entry_ns"]) / 1000 for r in records]
        if tracer is not None:
            row["spans"] = sum('"type":"span"' in line
                               for line in (folder / "trace.jsonl").read_text().splitlines())
    finally:
        if tracer is not None and tracer.poll() is None:
            os.kill(tracer.pid, signal.SIGKILL)
            tracer.wait()
        op.stop()
    row.update(reconciles=len(durations), median_us=statistics.median(durations),
               p90_us=percentile(durations, 0.9))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", default="cr-operator,cr-operator-v018-stripped")
    parser.add_argument("--only", default=",".join(WAYS), help="ways to trace (untraced runs "
                        "always)")
    parser.add_argument("--copies", type=int, default=4, help="workload copies (about 130 "
                        "reconciles each)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default="build/bench-real.json")
    args = parser.parse_args()
    builds = args.builds.split(",")
    ways = ["untraced", *[w for w in args.only.split(",") if w]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        cluster = start_cluster(Path(tmp) / "kube")
        try:
            install_crd(cluster.api_client)
            for build in builds:
                for way in ways:
                    if way == "dlv" and CR_BUILDS[build].stripped:
                        continue  # Delve needs DWARF
                    runs = []
                    for i in range(args.repeat):
                        folder = Path(tmp) / f"{build}-{way}-{i}"
                        folder.mkdir()
                        runs.append(one_run(cluster, build, way, args.copies, folder))
                    rows.append(summarize(runs))
        finally:
            cluster.stop()
    print_table(rows)
    sample = in_house()
    if sample:
        print("in-house sample (scripts/bench-backends, build/bench-backends.json):")
        for line in sample:
            print("  " + line)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "copies": args.copies,
                                           "repeat": args.repeat}, indent=2) + "\n")
    print(f"written {args.json}")


def summarize(runs: list[dict]) -> dict:
    """Medians over the repeats."""
    out = {"build": runs[0]["build"], "way": runs[0]["way"], "runs": len(runs)}
    for key in ("reconciles", "spans", "median_us", "p90_us", "attach_pause_ms",
                "told_cost_us"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 1) if values else None
    return out


def in_house() -> list[str]:
    """The in-house sample's figures from the last scripts/bench-backends run, if any."""
    path = ROOT / "build" / "bench-backends.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    lines = []
    for row in data.get("rows") or []:
        if row.get("told_us") is not None or row.get("us_per_hit") is not None:
            lines.append(f"{row.get('build', '')} {row['how']}: {row.get('us_per_hit')} µs/hit "
                         f"as the operator feels it, told {row.get('told_us')} µs/hit")
    big = data.get("big") or {}
    for row in big.get("rows") or []:
        lines.append(f"attach pause on {big.get('size_mb', 0):.0f} MB ({row['how']}): "
                     f"{row.get('attach_pause_ms')} ms")
    return lines


def print_table(rows: list[dict]) -> None:
    def fmt(value, spec: str = ".1f") -> str:
        return "-" if value is None else format(value, spec)

    print(f"{'build':26} {'way':9} {'calls':>6} {'spans':>6} {'median µs':>10} {'p90 µs':>9} "
          f"{'told µs/hit':>12} {'pause ms':>9}")
    for r in rows:
        print(f"{r['build']:26} {r['way']:9} {fmt(r['reconciles'], '.0f'):>6} "
              f"{fmt(r.get('spans'), '.0f'):>6} {fmt(r['median_us']):>10} "
              f"{fmt(r['p90_us']):>9} {fmt(r['told_cost_us']):>12} "
              f"{fmt(r['attach_pause_ms']):>9}")


if __name__ == "__main__":
    main()
