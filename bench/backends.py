"""Cost per breakpoint hit of each way to trace the same operator: the tracer with kernel
uprobes, with gdb, with Delve (values by name, and from registers), and `dlv trace` itself;
the operator's stopped time, the tracer's CPU and peak memory; the calls per second each
reaches with 4 workers without losing a call; the operator's pause while each attaches to a
Go binary of 100 MB or more with DWARF (scripts/build-big-operator).

Method: the sample operator runs N reconciles on one worker (so stops never overlap;
--workers 4 lets Delve report simultaneous hits in one stop) and records each call's
CLOCK_MONOTONIC entry and exit. The run's span (first entry to last exit) traced minus
untraced, divided by the breakpoint hits, is the cost of one hit as the operator feels it; the
extra time itself is the time it spent stopped. Prints the tables and writes
build/bench-backends.json.

    python -m bench.backends [--calls N] [--work-us US] [--repeat R] [--workers W]
                             [--only HOW,...] [--builds B,...] [--no-rates] [--no-big]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tracer.binary.analyze import analyze
from tracer.targets.process import file_bytes, read_memory

ROOT = Path(__file__).resolve().parent.parent
BUILDS = ["go1.19/sample-operator-debug", "go1.19/sample-operator", "go1.27/sample-operator"]
FUNCTION = "example.com/sample-operator/controllers.(*SampleReconciler).Reconcile"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench-backends")
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--work-us", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default="",
                        help="comma-separated ways to run (untraced is always run), "
                             "e.g. 'tracer uprobe'")
    parser.add_argument("--builds", default=",".join(BUILDS),
                        help="comma-separated sample builds")
    parser.add_argument("--no-rates", action="store_true",
                        help="skip the calls/s without loss runs")
    parser.add_argument("--no-big", action="store_true",
                        help="skip the 100 MB binary attach pause")
    parser.add_argument("--json", default="build/bench-backends.json",
                        help="where to write the results")
    parser.add_argument("--workers", type=int, default=1,
                        help="more than 1: stops overlap (Delve reports simultaneous hits in "
                             "one stop)")
    return parser.parse_args(argv)


args = parse([])  # replaced by main()'s


def knobs() -> list[str]:
    return ["-workers", str(args.workers), "-calls", str(args.calls), "-work-us",
            str(args.work_us), "-objects", "50", "-error-every", "10", "-requeue-every", "0",
            "-linger"]


def dlv_binary() -> str | None:
    """The Delve the tracer runs (--backend dlv), so that `dlv trace` is the same Delve."""
    try:
        from tracer.backends.dlv.backend import find_dlv

        return find_dlv()
    except Exception:  # noqa: BLE001 - moved or none: the one on PATH, if any
        return shutil.which("dlv")


def tracer_pid(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])


def end(proc, sig=signal.SIGTERM, wait=10):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            proc.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def calls_of(truth: Path):
    text = truth.read_text() if truth.exists() else ""
    rows = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]
    done = next((r for r in rows if r.get("done")), None)
    return done, [r for r in rows if not r.get("done")]


def armed(pid, start, size=64):
    """dlv trace has put a breakpoint into the function (its bytes differ from the file's)."""
    exe = f"/proc/{pid}/exe"
    return read_memory(pid, start, size) != file_bytes(exe, start, size)


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of a process and its children (gdb, Delve), summed: VmHWM of
    each, read while they run (rusage would count the bench's own pages at the fork)."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    total = 0
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def wait_rusage(proc, sig, timeout):
    """End a helper and return its rusage (its waited-for children, gdb or Delve, included)."""
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def run(binary: Path, how: str, tmp: Path, knobs: list[str], work_first: bool = False) -> dict:
    """One operator run, traced `how`. work_first: the operator is already working when the
    tracer attaches (to see the attach pause from the operator's side)."""
    tag = f"{binary.name}-{how}-{len(list(tmp.iterdir()))}".replace("/", "-").replace(" ", "-")
    truth, trace = tmp / f"truth-{tag}.jsonl", tmp / f"trace-{tag}.jsonl"
    op = subprocess.Popen([str(binary), "-wait-signal", "-ground-truth", str(truth), *knobs],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert op.stdout.readline().startswith("ready")
    helper = None
    row = {"how": how, "hits": None, "lost": None, "told_us": None, "cpu_s": None,
           "rss_mb": None, "attach_pause_ms": None, "values": ""}
    try:
        if work_first:
            os.kill(op.pid, signal.SIGUSR1)
            time.sleep(1.0)
        t_attach = time.monotonic_ns()
        if how.startswith("tracer"):
            backend = how.split()[1]
            env = dict(os.environ)
            forced = ["--backend-option", "values=registers"] if "registers" in how else []
            helper = subprocess.Popen(
                [sys.executable, "-m", "tracer", "attach", str(op.pid), "--backend", backend,
                 *forced, "-o", str(trace), "-q", "--max-stopped", "off"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            while not (trace.exists() and trace.read_text().count("\n") >= 1):
                if helper.poll() is not None:
                    raise RuntimeError(f"{how} exited early")
                time.sleep(0.02)
        elif how == "dlv trace":
            out = tmp / f"dlv-trace-{tag}.out"
            helper = subprocess.Popen(
                [dlv_binary(), "trace", "-p", str(op.pid), r"SampleReconciler\).Reconcile$"],
                stdout=subprocess.DEVNULL, stderr=open(out, "w"), stdin=subprocess.DEVNULL,
                start_new_session=True)
            fn = next(f for f in analyze(str(binary)).functions if f.name == FUNCTION)
            deadline = time.monotonic() + 120
            while not (tracer_pid(op.pid) and armed(op.pid, fn.entry)):
                if time.monotonic() > deadline or helper.poll() is not None:
                    raise RuntimeError("dlv trace did not arm")
                time.sleep(0.02)
            time.sleep(0.5)  # the entry is armed first; let it set the return breakpoints
        t_armed = time.monotonic_ns()
        if not work_first:
            os.kill(op.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 900
        while calls_of(truth)[0] is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{how}: the operator did not finish")
            time.sleep(0.05)
        done, calls = calls_of(truth)
        row["calls"] = len(calls)
        row["wall_ms"] = (max(c["exit_ns"] for c in calls)
                          - min(c["entry_ns"] for c in calls)) / 1e6
        if work_first:
            # The operator's own view of the attach: its longest gap between call starts
            # while the tracer attached (its calls are due every 1/rate s).
            starts = sorted(c["entry_ns"] for c in calls)
            during = [b - a for a, b in zip(starts, starts[1:], strict=False)
                      if b >= t_attach and a <= t_armed]
            row["longest_gap_ms"] = max(during, default=0) / 1e6
        usage = None
        if helper is not None:
            row["rss_mb"] = peak_rss_mb(helper.pid)
        if how.startswith("tracer"):
            usage = wait_rusage(helper, signal.SIGINT, 60)
            lines = trace.read_text().splitlines()
            last, header = json.loads(lines[-1]), json.loads(lines[0])
            spans = sum(1 for line in lines if '"type":"span"' in line.replace(" ", ""))
            row["hits"] = last["pairing"]["hits"]
            row["spans"] = spans
            row["lost"] = (sum((last.get("events_lost") or {}).values())
                           + last.get("hits_dropped", 0) + max(0, len(calls) - spans))
            row["attach_pause_ms"] = header["attach_pause_ms"]
            told = header.get("cost_per_hit_ns")
            row["told_us"] = told / 1000 if told else None
            # Durations at the median: the operator's own clock, the spans, and the spans with
            # the told cost of the one hit each call holds taken out (no steps here).
            raw = [s["end_ns"] - s["start_ns"] for s in map(json.loads, lines[1:-1])
                   if s.get("type") == "span" and s.get("end_ns")]
            row["true_p50_us"] = statistics.median(c["exit_ns"] - c["entry_ns"]
                                                   for c in calls) / 1000
            row["raw_p50_us"] = statistics.median(raw) / 1000 if raw else None
            row["corrected_p50_us"] = (row["raw_p50_us"] - told / 1000
                                       if raw and told else None)
            row["values"] = next((n.split(":")[1].split("(")[0].strip() for n in header["notes"]
                                  if n.startswith("dlv values:")),
                                 "kernel fetch-args" if backend == "uprobe"
                                 else "registers (agent)")
        elif how == "dlv trace":
            end(op, signal.SIGKILL)  # dlv trace does not detach on SIGINT; the run is over
            usage = wait_rusage(helper, signal.SIGKILL, 10)
            text = out.read_text().splitlines()
            entries = sum(1 for line in text if line.startswith("> "))
            returns = sum(1 for line in text if line.startswith(">> "))
            row["hits"] = entries + returns
            row["lost"] = max(0, len(calls) - entries) + max(0, len(calls) - returns)
            row["values"] = "by name (Delve prints them)"
        if usage is not None:
            row["cpu_s"] = usage.ru_utime + usage.ru_stime
        return row
    finally:
        if helper is not None and helper.returncode is None:
            end(helper, signal.SIGINT, 30)
        end(op)


def ways(build: str) -> list[str]:
    hows = ["untraced", "tracer uprobe", "tracer gdb", "tracer dlv"]
    if build.endswith("-debug"):
        hows.append("tracer dlv (registers)")
    hows.append("dlv trace")
    if args.only:
        hows = ["untraced"] + [h for h in hows if h in args.only.split(",")]
    return hows


def costs(tmp: Path) -> list[dict]:
    rows = []
    for build in args.builds.split(","):
        base = None
        for how in ways(build):
            samples = [run(ROOT / "build/samples" / build, how, tmp, knobs())
                       for _ in range(args.repeat)]
            row = dict(samples[0], build=build)
            for key in ("wall_ms", "cpu_s", "rss_mb", "told_us", "true_p50_us", "raw_p50_us",
                        "corrected_p50_us"):
                if row.get(key) is not None:
                    row[key] = statistics.median(s[key] for s in samples)
            if how == "untraced":
                base = row
            else:
                extra = row["wall_ms"] - base["wall_ms"] * row["calls"] / base["calls"]
                row["stopped_ms"] = extra
                row["extra_ms_per_call"] = extra / row["calls"]
                row["us_per_hit"] = extra * 1000 / row["hits"] if row["hits"] else None
            rows.append(row)
            print(f"  {build:30} {how:24} done", file=sys.stderr, flush=True)
    return rows


# Calls per run at each rate, by how fast each way goes (a run takes seconds, not minutes).
RATE_CALLS = {"untraced": 200_000, "tracer uprobe": 100_000, "tracer gdb": 4_000,
              "tracer dlv": 400, "dlv trace": 400}
RATES = [0, 40_000, 20_000, 10_000, 5_000, 2_000, 1_000, 500, 200, 100]


def rates(tmp: Path) -> list[dict]:
    """4 workers as fast as they go (rate 0), then slower until no call is lost: the calls
    per second each way reaches without losing one."""
    out = []
    binary = ROOT / "build/samples/go1.27/sample-operator"
    for how in ways("go1.27/sample-operator"):
        for rate in RATES:
            knobs = ["-workers", "4", "-rate", str(rate), "-calls", str(RATE_CALLS[how]),
                     "-objects", "50", "-error-every", "10", "-requeue-every", "0", "-linger"]
            row = run(binary, how, tmp, knobs)
            row["asked_rate"] = rate or None
            row["calls_per_s"] = row["calls"] / (row["wall_ms"] / 1000)
            print(f"  rate {rate or 'max':>6} {how:24} {row['calls_per_s']:9.0f} calls/s, "
                  f"lost {row['lost']}", file=sys.stderr, flush=True)
            if not row["lost"]:
                out.append(row)
                break
        else:
            out.append(dict(row, calls_per_s=None))
    return out


def big(tmp: Path) -> dict | None:
    """The operator's pause while each backend attaches to a 100 MB Go binary with DWARF,
    from the header (first stop to armed) and from the operator's own call starts."""
    built = subprocess.run([str(ROOT / "scripts/build-big-operator")], capture_output=True,
                           text=True)
    if built.returncode != 0:
        print(f"  big binary not built: {built.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    binary = Path(built.stdout.strip().splitlines()[-1])
    info = analyze(str(binary))
    # 10 s of calls: the tracer must arm while they run, and reading a 100 MB binary takes
    # seconds on a busy machine (a row with no hits armed after the calls: left out).
    knobs = ["-workers", "1", "-rate", "1000", "-calls", "10000", "-objects", "50", "-linger"]
    rows = []
    for how in ["untraced", "tracer uprobe", "tracer gdb", "tracer dlv"]:
        if args.only and how != "untraced" and how not in args.only.split(","):
            continue
        samples = [run(binary, how, tmp, knobs, work_first=True) for _ in range(args.repeat)]
        if how != "untraced":
            samples = [s for s in samples if s["hits"]] or samples[:1]
        row = dict(samples[0])
        row["runs"] = len(samples)
        for key in ("longest_gap_ms", "attach_pause_ms", "cpu_s", "rss_mb"):
            values = [s[key] for s in samples if s.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        rows.append(row)
        print(f"  big binary {how:24} done", file=sys.stderr, flush=True)
    return {"binary": str(binary), "size_mb": binary.stat().st_size / 1e6,
            "dwarf": info.has_dwarf, "functions": len(info.functions), "rows": rows}


def ptrace_floor() -> dict | None:
    """One ptrace stop's cost with no debugger around it (samples/ptrace-floor/floor.c):
    what no ptrace-based backend can go below on this machine."""
    binary = ROOT / "build/samples/c/ptrace-floor"
    if not binary.exists():
        return None
    runs = [json.loads(subprocess.run([str(binary), "20000"], capture_output=True, text=True,
                                      check=True).stdout) for _ in range(args.repeat)]
    return {key: statistics.median(r[key] for r in runs)
            for key in ("untraced_us", "stop_us", "stop_same_cpu_us")} | {"calls": 20000}


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    global args
    args = parse(argv)
    if not dlv_binary() or not shutil.which("gdb"):
        sys.exit("bench-backends needs gdb and Delve (scripts/setup builds Delve)")
    print(f"Delve: {dlv_binary()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        rows = costs(Path(tmp))
        rate_rows = [] if args.no_rates else rates(Path(tmp))
        big_result = None if args.no_big else big(Path(tmp))
    floor = ptrace_floor()
    print(f"\n{args.calls} reconciles, {args.workers} worker(s), {args.work_us} us of work each; "
          f"median of {args.repeat}; load {os.getloadavg()[0]:.2f}. cost per hit = (traced - "
          "untraced span) / hits; told = what the tracer measured at attach; stopped = the "
          "extra time; CPU and peak RSS of the tracer with its gdb or Delve, summed\n")
    head = (f"{'build':30} {'how':24} {'calls':>6} {'hits':>6} {'span ms':>9} {'us/hit':>7} "
            f"{'told':>6} {'stopped ms':>10} {'CPU s':>6} {'RSS MB':>7}  values")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['build']:30} {r['how']:24} {r['calls']:6} {r['hits'] or '':>6} "
              f"{r['wall_ms']:9.1f} {fmt(r.get('us_per_hit'), '.1f'):>7} "
              f"{fmt(r.get('told_us'), '.1f'):>6} {fmt(r.get('stopped_ms'), '.1f'):>10} "
              f"{fmt(r.get('cpu_s'), '.2f'):>6} {fmt(r.get('rss_mb'), '.0f'):>7}  {r['values']}")
    corrected = [r for r in rows if r.get("corrected_p50_us") is not None]
    if corrected:
        print("\nDurations at the median (the operator's own clock; the spans; the spans less the "
              "told cost of the one hit each call holds)\n")
        print(f"{'build':30} {'how':24} {'true us':>8} {'raw us':>8} {'corrected':>9} "
              f"{'off by':>7}  within 20 us")
        for r in corrected:
            off = r["corrected_p50_us"] - r["true_p50_us"]
            print(f"{r['build']:30} {r['how']:24} {r['true_p50_us']:8.1f} {r['raw_p50_us']:8.1f} "
                  f"{r['corrected_p50_us']:9.1f} {off:7.1f}  {'yes' if abs(off) <= 20 else 'NO'}")
    if rate_rows:
        print("\nCalls per second reached without losing a call (go1.27 sample, 4 workers, "
              "as fast as they go, then slower until nothing is lost)\n")
        print(f"{'how':24} {'asked':>7} {'calls/s':>9} {'calls':>7} {'lost':>5} {'CPU s':>6} "
              f"{'RSS MB':>7}")
        for r in rate_rows:
            print(f"{r['how']:24} {r['asked_rate'] or 'max':>7} {fmt(r['calls_per_s'], '.0f'):>9} "
                  f"{r['calls']:7} {r['lost'] or 0:5} {fmt(r.get('cpu_s'), '.2f'):>6} "
                  f"{fmt(r.get('rss_mb'), '.0f'):>7}")
    if big_result:
        print(f"\nAttach to {big_result['binary']} ({big_result['size_mb']:.0f} MB, DWARF "
              f"{big_result['dwarf']}, {big_result['functions']:,} functions), operator "
              "working at 1,000 calls/s: pause in the header (first stop to armed) and the "
              "operator's longest gap between call starts while attaching (1 ms when nothing "
              "stops it)\n")
        print(f"{'how':24} {'header ms':>10} {'longest gap ms':>15} {'CPU s':>6} {'RSS MB':>7}"
              "  runs")
        for r in big_result["rows"]:
            armed = r["how"] == "untraced" or r["hits"]
            print(f"{r['how']:24} {fmt(r['attach_pause_ms'], '.1f'):>10} "
                  f"{fmt(r.get('longest_gap_ms'), '.1f'):>15} {fmt(r.get('cpu_s'), '.2f'):>6} "
                  f"{fmt(r.get('rss_mb'), '.0f'):>7}  {r['runs']}"
                  + ("" if armed else "  armed after the calls ended: no figure"))
    if floor:
        print(f"\nThe least a debugger stop costs here (build/samples/c/ptrace-floor: a C "
              f"ptracer doing only wait, registers, carry out `push rbp`, continue), median of "
              f"{args.repeat}: {floor['stop_us']:.1f} us per stop where the scheduler puts "
              f"tracer and operator, {floor['stop_same_cpu_us']:.1f} us with both on one CPU")
    out = ROOT / args.json
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"calls": args.calls, "workers": args.workers, "dlv": dlv_binary(),
                               "work_us": args.work_us, "repeat": args.repeat,
                               "load": os.getloadavg()[0], "rows": rows, "rates": rate_rows,
                               "big": big_result, "ptrace_floor": floor}, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
