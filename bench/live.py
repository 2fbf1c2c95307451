"""The live view's own cost: the tracer's CPU while a sample operator runs 200 reconciles/s,
with the live screen (in tmux) and with --quiet, and whether any call was lost. Writes
build/bench-live.json.

    python -m bench.live
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
OPERATOR = ROOT / "build/samples/go1.27/sample-operator"
SECONDS = 10
RATE = 200


def measure(mode: str, tmp: Path) -> dict:
    truth, trace = tmp / f"truth-{mode}.jsonl", tmp / f"trace-{mode}.jsonl"
    op = subprocess.Popen([str(OPERATOR), "-wait-signal", "-ground-truth", str(truth),
                           "-workers", "4", "-calls", str(RATE * SECONDS), "-rate", str(RATE),
                           "-objects", "50", "-error-every", "9", "-requeue-every", "13",
                           "-linger"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)
    op.stdout.readline()
    tracer_cmd = [sys.executable, "-m", "tracer", "attach", str(op.pid), "-o", str(trace)]
    sock = tmp / "tmux.sock"
    server = None
    try:
        if mode == "live":
            subprocess.run(["tmux", "-S", str(sock), "new-session", "-d", "-x", "120", "-y",
                            "40", shlex.join(tracer_cmd) + "; sleep 600"], check=True)
            server = int(subprocess.check_output(
                ["tmux", "-S", str(sock), "display-message", "-p", "#{pid}"], text=True))
        else:
            proc = subprocess.Popen(tracer_cmd + ["--quiet"], stderr=subprocess.DEVNULL)
        while not (trace.exists() and trace.read_text().count("\n") >= 1):
            time.sleep(0.05)
        tracer = next(p for p in psutil.Process(server).children(recursive=True)
                      if p.cmdline()[:3] == tracer_cmd[:3]) if server else psutil.Process(proc.pid)
        cpu0 = sum(tracer.cpu_times()[:2])
        t0 = time.monotonic()
        os.kill(op.pid, signal.SIGUSR1)
        while '"done"' not in truth.read_text() if truth.exists() else True:
            time.sleep(0.1)
        cpu = sum(tracer.cpu_times()[:2]) - cpu0
        wall = time.monotonic() - t0
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    finally:
        op.terminate()
        op.wait()
        if server:
            os.kill(server, signal.SIGTERM)
    calls = sum(1 for line in truth.read_text().splitlines() if '"seq"' in line)
    spans = sum(1 for line in trace.read_text().splitlines() if '"type":"span"' in line)
    return {"mode": mode, "calls": calls, "spans": spans, "lost": calls - spans,
            "tracer_cpu_percent": round(100 * cpu / wall, 1), "seconds": round(wall, 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(mode, Path(tmp)) for mode in ("quiet", "live")]
    for row in rows:
        print(f"{row['mode']:>6}: {row['calls']} calls at {RATE}/s, {row['spans']} spans, "
              f"{row['lost']} lost, tracer CPU {row['tracer_cpu_percent']}% of one core "
              f"over {row['seconds']} s")
    out = ROOT / "build" / "bench-live.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
