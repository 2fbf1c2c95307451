"""Time `tracer report` on a 1,000,000-span trace: a synthetic controller-runtime operator
(two controllers, 250 objects, 4 workers each, watch events, errors, panics, requeues),
generated once under build/bench/. Prints one line; writes build/bench-report.json.

    python -m bench.report [--spans N] [--out FILE]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tracer.analysis.synthetic import VERSION

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 5.0


def synthetic(spans: int) -> Path:
    """The synthetic trace of `spans` spans, generated once (its name holds the generator's
    version, so a changed generator writes a new one)."""
    trace = ROOT / "build" / "bench" / f"synthetic-v{VERSION}-{spans}.jsonl"
    if not (trace.exists() and trace.stat().st_size):
        trace.parent.mkdir(parents=True, exist_ok=True)
        print(f"bench-report: generating {trace.relative_to(ROOT)} ({spans} spans, once)",
              file=sys.stderr)
        part = trace.with_name(f"{trace.name}.part.{os.getpid()}")
        subprocess.run([sys.executable, "-m", "tracer.analysis.synthetic", str(part),
                        "--spans", str(spans)], check=True)
        part.rename(trace)
    return trace


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench-report")
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--out", default="build/bench-report.json")
    args = parser.parse_args(argv)
    trace, spans, out = synthetic(args.spans), args.spans, ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tracer", "report", str(trace)]
    how = "python -m tracer report FILE"
    runs = []
    for _ in range(3):
        began = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        runs.append(time.perf_counter() - began)
        if done.returncode != 0:
            sys.exit(f"bench-report: tracer report failed: {done.stderr.strip()}")
    median = statistics.median(runs)
    result = {
        "spans": spans, "file": str(trace.relative_to(ROOT)),
        "file_bytes": trace.stat().st_size, "command": how,
        "runs_s": [round(r, 3) for r in runs], "best_s": round(min(runs), 3),
        "median_s": round(median, 3), "target_s": TARGET_S, "within_target": median < TARGET_S,
        "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"bench-report: tracer report on {spans:,} spans ({result['file_bytes'] / 1e6:.0f} "
          f"MB): median {median:.2f} s, best {min(runs):.2f} s of 3 "
          f"(target {TARGET_S:g} s, {os.cpu_count()} CPUs) -> {args.out}")


if __name__ == "__main__":
    main()
