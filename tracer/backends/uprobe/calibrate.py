"""What one uprobe hit costs, measured at attach on this machine with this run's probes.

Two uprobes with the plan's own entry and return fetch-args go on the calibration function
(tracer/backends/calibration.py) in the tracer's own process, recording into the run's
private instance: bursts of calls with and without them, the difference per hit is the cost.
Fastest of several bursts: interruptions only add time.
"""

from __future__ import annotations

import os
import time

from tracer.backends import calibration
from tracer.backends.uprobe import tracefs

BURSTS = 5
CALLS = 200  # per burst: 2 hits a call, a few ms of probes a burst


def measure(root: str, instance: str, group: str, entry_code: bytes, entry_args: str,
            exit_args: str) -> tuple[int | None, str]:
    """(ns per hit, how it was measured). The probes are in the run's group (so any way out
    removes them) and gone when this returns."""
    data, entry, ret = calibration.page(entry_code)
    names = [f"{group}/cal_entry", f"{group}/cal_ret"]
    mapped = calibration.MappedPage(data)
    try:
        if mapped.address is None:
            return None, "not measured: no folder allows an executable calibration page"
        events = os.path.join(root, "uprobe_events")
        tracefs.write(events, f"p:{names[0]} {mapped.path}:0x{entry:x} {entry_args}\n",
                      append=True)
        tracefs.write(events, f"p:{names[1]} {mapped.path}:0x{ret:x} {exit_args}\n",
                      append=True)
        mapped.forget_path()  # the probes hold the file now; a kill leaves nothing behind
        call = mapped.function(0)
        tracefs.write(os.path.join(instance, "set_event_pid"), str(os.getpid()))
        enables = [os.path.join(instance, "events", name, "enable") for name in names]

        def burst() -> int:
            t0 = time.perf_counter_ns()
            for _ in range(CALLS):
                call()
            return time.perf_counter_ns() - t0

        bare, probed = [], []
        for _ in range(BURSTS):
            bare.append(burst())
            for enable in enables:
                tracefs.write(enable, "1")
            probed.append(burst())
            for enable in enables:
                tracefs.write(enable, "0")
        hits = _recorded(instance)
        if hits < BURSTS * CALLS * 2:
            return None, f"not measured: {hits} of {BURSTS * CALLS * 2} calibration hits seen"
        cost = max(0, (min(probed) - min(bare)) // (CALLS * 2))
        return cost, (f"at attach: {BURSTS} bursts of {CALLS} calls through uprobes with this "
                      "run's entry and return fetch-args on a private code page (the "
                      "operator's entry instruction, a RET, a nil error), fastest burst with "
                      "the probes minus fastest without, per hit")
    except OSError as exc:
        return None, f"not measured: {exc.strerror or exc}"
    finally:
        for name in names:
            try:
                tracefs.write(os.path.join(root, "uprobe_events"), f"-:{name}\n", append=True)
            except OSError:
                pass
        mapped.close()
        try:
            tracefs.write(os.path.join(instance, "trace"), "")  # the calibration's records
        except OSError:
            pass


def _recorded(instance: str) -> int:
    """Events the instance holds (the calibration's), counted from its per-CPU stats."""
    total = 0
    folder = os.path.join(instance, "per_cpu")
    for cpu in os.listdir(folder):
        with open(os.path.join(folder, cpu, "stats")) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("entries", "overrun"):
                    total += int(value.split()[0])
    return total
