"""What one gdb hit costs, measured before the attach with this run's agent and decoders.

A child process of the tracer maps the calibration function (tracer/backends/calibration.py)
and waits; a second gdb, set up like the run's (non-stop, the agent), attaches to it and arms
the plan's own entry and return points (same decoders) on the function's probed copy. The
child then times bursts of calls to the probed and the unprobed copy; the difference per hit
is what a hit costs: the ptrace stops, gdb, the agent's handler, the step over the
breakpoint. The operator is not touched while this runs.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tracer.backends import calibration
from tracer.backends.base import Backend
from tracer.probes.plan import ENTRY, EXIT, POLL, POLL_EXIT, Plan

BURSTS = 9  # pairs
CALLS = 60  # per burst: 2 hits a call, about 30 ms a burst with gdb
# Median of paired bursts, each pair after a short sleep: where the scheduler puts gdb and the
# stopped thread (one CPU or two) changes a stop's cost by 40 us here, and the fastest burst
# of one placement was 175 to 273 us a hit between attaches (the median: 207 to 220).
BODY = 300_000  # spin iterations in each call, about 100 µs: hits apart as in a real call
ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from tracer.backends import calibration
calls, bursts = int(sys.argv[3]), int(sys.argv[4])
mapped = calibration.MappedPage(bytes.fromhex(sys.argv[2]))
mapped.forget_path()  # gdb sets its breakpoints by address: the file is not needed
print(mapped.address or 0, flush=True)
sys.stdin.readline()
probed, bare = mapped.function(0), mapped.function(calibration.COPY)
def burst(f):
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        f()
    return time.perf_counter_ns() - t0
out = {"bare": [], "probed": []}
for _ in range(bursts):
    time.sleep(0.01)  # each pair of bursts where the scheduler puts it anew
    out["bare"].append(burst(bare))
    out["probed"].append(burst(probed))
print(json.dumps(out), flush=True)
sys.stdin.readline()
mapped.close()
"""


def _line(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError("the calibration process did not answer")
    return stream.readline()


def measure(plan: Plan, entry_code: bytes,
            make_backend: Callable[[], Backend]) -> tuple[int | None, str]:
    """(ns per hit, how it was measured). `make_backend` gives a gdb backend set up like the
    run's (the caller's class and settings: this module imports no backend)."""
    # A Rust future's poll and its RET stand for the entry and the return.
    entry = next((p for p in plan.points if p.role in (ENTRY, POLL)), None)
    exit_ = next((p for p in plan.points if p.role in (EXIT, POLL_EXIT)), None)
    if entry is None or exit_ is None:
        return None, "not measured: the plan has no entry and return"
    data, entry_offset, ret_offset = calibration.page(entry_code, BODY)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ROOT), data.hex(), str(CALLS), str(BURSTS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    backend = make_backend()
    try:
        address = int(_line(child.stdout, 30))
        if not address:
            return None, "not measured: no folder allows an executable calibration page"
        points = [replace(entry, addr=entry_offset), replace(exit_, addr=ret_offset)]
        backend.start(os.path.realpath(sys.executable))
        backend.attach(child.pid)
        backend.arm(replace(plan, points=points, go_types_base=None), address)
        backend.resume()
        child.stdin.write("go\n")
        child.stdin.flush()
        times = json.loads(_line(child.stdout, 60))
        backend.stop_target()
        backend.detach()
        cost = max(0, int(statistics.median(
            p - b for p, b in zip(times["probed"], times["bare"], strict=True))) // (CALLS * 2))
        return cost, (f"before the attach: {BURSTS} pairs of bursts of {CALLS} calls through this "
                      "run's entry and return breakpoints (same gdb settings, agent and "
                      "decoders) on a private code page in a calibration process (the "
                      "operator's entry instruction, about 100 µs of work, a RET, a nil "
                      "error), median over the pairs of (burst with the breakpoints - burst "
                      "without), per hit")
    except Exception as exc:  # noqa: BLE001 - a failed calibration is said, never fatal
        return None, f"not measured: {exc}"
    finally:
        try:
            backend.close()
        except Exception:  # noqa: BLE001
            pass
        if child.poll() is None:
            child.kill()
        child.wait()
