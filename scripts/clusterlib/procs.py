"""Daemons started with their PID recorded in DIR/pids, and stopped by that PID alone.

A record holds the PID and the process's start time (field 22 of /proc/PID/stat): a PID the
kernel has since given to another process is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .files import write_atomic


class ClusterError(Exception):
    """A step failed; the message says which and why (the daemon's last log lines)."""


def start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat[stat.rindex(")") + 2:].split()[19])


def alive(pid: int, started: int | None) -> bool:
    now = start_time(pid)
    if now is None:
        return False
    state = Path(f"/proc/{pid}/stat").read_text()
    if state[state.rindex(")") + 2] == "Z":  # a zombie has exited; only its parent may reap it
        return False
    return started is None or now == started


def start(pids: Path, logs: Path, name: str, argv: list[str],
          env: dict[str, str] | None = None) -> int:
    """Start ARGV in its own session (a closed terminal does not end it), log to logs/NAME.log."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=env)
    write_atomic(pids / f"{name}.pid", json.dumps(
        {"pid": proc.pid, "start": start_time(proc.pid), "argv": argv}) + "\n")
    # The record is what `down` reads; the Popen object is dropped without waiting on purpose.
    proc.returncode = 0  # keeps Python from warning that the child is still running
    return proc.pid


def records(pids: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(pids.glob("*.pid")) if pids.is_dir() else ():
        try:
            out[f.stem] = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
    return out


def running(pids: Path, name: str) -> bool:
    rec = records(pids).get(name)
    return bool(rec) and alive(rec["pid"], rec.get("start"))


def stop(pids: Path, name: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after GRACE seconds; the record goes once the process is gone."""
    record = pids / f"{name}.pid"
    rec = records(pids).get(name)
    if rec is None:
        record.unlink(missing_ok=True)
        return
    pid, started = rec["pid"], rec.get("start")
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not alive(pid, started):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pid, started):
            _reap(pid)
            time.sleep(0.05)
    if alive(pid, started):
        raise ClusterError(f"{name} (PID {pid}) survived SIGKILL")
    record.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    # When `up` and `down` run in one process (the tests), the daemon is our child.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_pid(pid: int, started: int | None = None) -> None:
    """SIGKILL one process `down` knows by its PID (a containerd shim from containerd's state
    under DIR, a process in the cluster's cgroups), and wait. With STARTED (its start time when
    it was found), a PID the kernel has since given to another process is left alone."""
    now = start_time(pid)
    if now is None or (started is not None and now != started):
        return
    started = now
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(pid, started):
        time.sleep(0.05)
