"""Kernel-side cost per uprobe hit of what the probes fetch: the sample operator (one worker)
with the tracer's probes set by hand on a private instance and nobody reading, for each
variant of fetch-args, against the same run untraced. (traced - untraced span) / hits.

    python -m bench.fetchargs [--calls N] [--repeat R] [--binary B] [VARIANT...]

Variants: none, goid (sp + goroutine), registers (sp, goroutine and registers), no-strings
(scalars only), per-array (each string as four u64[8] arrays, the layout before one u64[32]),
short (strings cut to 64 bytes), names-8 (the name cut to 64 bytes), no-errmsg, no-names,
full (what the tracer fetches).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time

from tracer.backends.uprobe import backend as ub
from tracer.backends.uprobe import tracefs
from tracer.binary.analyze import analyze
from tracer.probes.compile import compile_plan

KNOBS: list[str] = []
BIN = ""
TRACEFS = ""
info = plan = None


def fetchargs(point, variant):
    full = ub._fetchargs(point, plan.go_goid_offset).split()
    if variant == "none":
        return []
    if variant == "goid":
        return [a for a in full if a.split("=")[0] in ("sp", "goid")]
    if variant == "registers":  # sp, goroutine and registers: no other memory read
        return [a for a in full if "(" not in a or a.startswith("goid")]
    if variant == "names-8":  # the name cut to 64 bytes
        return [a.replace("nm=+0(%r8):u64[32]", "nm=+0(%r8):u64[8]") for a in full]
    if variant == "no-strings":
        return [a for a in full if ":u64[" not in a]
    if variant == "per-array":
        out = []
        for a in full:
            name, _, rest = a.partition("=")
            if rest.endswith(":u64[32]"):
                pointer = rest[len("+0("):-len("):u64[32]")]
                out += [f"{name}{i}=+{i * 64}({pointer}):u64[8]" for i in range(4)]
            else:
                out.append(a)
        return out
    if variant == "no-errmsg":  # no message nor its length: nothing behind the error's data
        return [a for a in full if not a.startswith(("em", "pm"))]
    if variant == "no-names":
        return [a for a in full if not a.startswith(("ns", "nm"))]
    if variant == "short":
        return [a.replace(":u64[32]", ":u64[8]") for a in full]
    return full


def run(variant, tmp):
    truth = f"{tmp}/truth-{variant}.jsonl"
    op = subprocess.Popen([BIN, "-wait-signal", "-ground-truth", truth, *KNOBS],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert op.stdout.readline().startswith("ready")
    group = f"{tracefs.GROUP_PREFIX}{op.pid}"
    instance = f"{TRACEFS}/instances/{group}"
    try:
        if variant != "untraced":
            # The kernel splits a definition on whitespace: /proc/PID/exe names the same file
            # (it is resolved to its inode) wherever the clone lives.
            exe = f"/proc/{op.pid}/exe"
            for i, point in enumerate(plan.points):
                tracefs.write(f"{TRACEFS}/uprobe_events",
                              f"p:{group}/p{i} {exe}:0x{info.file_offset(point.addr):x} "
                              f"{' '.join(fetchargs(point, variant))}\n", append=True)
            os.makedirs(instance, exist_ok=True)
            tracefs.write(f"{instance}/trace_clock", "mono")
            tracefs.write(f"{instance}/buffer_size_kb", "16384")
            tracefs.write(f"{instance}/set_event_pid",
                          " ".join(os.listdir(f"/proc/{op.pid}/task")))
            tracefs.write(f"{instance}/options/event-fork", "1")
            tracefs.write(f"{instance}/events/{group}/enable", "1")
        os.kill(op.pid, signal.SIGUSR1)
        while '"done"' not in (text := open(truth).read() if os.path.exists(truth) else ""):
            time.sleep(0.05)
        rows = [json.loads(line) for line in text.splitlines() if line and "done" not in line]
        wall = max(r["exit_ns"] for r in rows) - min(r["entry_ns"] for r in rows)
        hits = 0
        if variant != "untraced":
            for cpu in os.listdir(f"{instance}/per_cpu"):
                stats = open(f"{instance}/per_cpu/{cpu}/stats").read()
                hits += sum(int(stats.split(f"\n{k}:")[1].split()[0]) if f"\n{k}:" in stats
                            else int(stats.split(f"{k}:")[1].split()[0])
                            for k in ("entries", "overrun"))
    finally:
        if variant != "untraced":
            tracefs._remove_group(TRACEFS, group)
        op.kill()
        _, _, usage = os.wait4(op.pid, 0)
        op.returncode = -9
    # CPU time is charged to the operator's threads, uprobe handlers included: unlike the
    # wall span it holds still while other work shares the cores.
    return wall, hits, (usage.ru_utime + usage.ru_stime) * 1e9


def main(argv: list[str] | None = None) -> None:
    global KNOBS, BIN, TRACEFS, info, plan
    parser = argparse.ArgumentParser(prog="scripts/bench-fetchargs")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--binary", default="build/samples/go1.27/sample-operator")
    parser.add_argument("variants", nargs="*",
                        default=["none", "goid", "no-strings", "per-array", "full"])
    args = parser.parse_args(argv)
    TRACEFS = tracefs.mount_point()
    BIN = os.path.abspath(args.binary)
    KNOBS = ["-workers", "1", "-calls", str(args.calls), "-work-us", "20", "-objects", "50",
             "-error-every", "10", "-linger"]
    info = analyze(BIN)
    plan = compile_plan(info)
    with tempfile.TemporaryDirectory(prefix="bench-fetchargs-") as tmp:
        names = ["untraced", *args.variants]
        results = {n: [] for n in names}
        for _ in range(args.repeat):
            for n in names:
                results[n].append(run(n, tmp))
    base = statistics.median(r[0] for r in results["untraced"])
    base_cpu = statistics.median(r[2] for r in results["untraced"])
    print(f"load {os.getloadavg()[0]:.2f}; {args.calls} calls, 1 worker, median of {args.repeat}")
    print(f"{'variant':12} {'wall us/hit':>12} {'cpu us/hit':>11}")
    for n in args.variants:
        wall = statistics.median(r[0] for r in results[n])
        cpu = statistics.median(r[2] for r in results[n])
        hits = results[n][0][1]
        print(f"{n:12} {(wall - base) / hits / 1000:12.2f} {(cpu - base_cpu) / hits / 1000:11.2f}"
              f"  ({hits} hits)")


if __name__ == "__main__":
    main()
