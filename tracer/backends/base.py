"""What a backend is to a session: attach, arm a plan, stream hits, leave cleanly.

Hits reach the session as JSON lines on `hits_fd`, whatever the backend:
  [ts_ns, point_index, lwp, goid_or_null, sp, value, handler_ns]   one breakpoint hit
  {"marker": n}                     written after every hit so far, when asked
  {"agent_error": "...", ...}       a hit that could not be decoded
`point_index` indexes `plan.points`; `value` is what the point's decoder captured, in the
shapes documented in the gdb agent (tracer/backends/gdb/agent.py), so spans are the same
whichever backend recorded them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tracer.probes.plan import Plan


class Backend(Protocol):
    name: str
    hits_fd: int  # read end; reaches EOF when the backend's debugger is gone
    attached: bool
    exited: dict | None  # set when the operator exited

    def start(self, binary: str | None) -> None:
        """Start the debugger with the program's file; whatever it reads of it, now, before
        anything stops."""

    def attach(self, pid: int) -> None:
        """Attach and stop every thread. UserError with a clear message on failure."""

    def attach_before_exec(self, pid: int, release: Callable[[], None]) -> float:
        """Attach to a process parked before exec, call release(), stop after the exec;
        returns when (time.monotonic) the program was stopped, for the attach pause."""

    def arm(self, plan: Plan, bias: int) -> int:
        """Set every point of the plan (addresses + bias); returns how many were set."""

    def resume(self) -> None: ...

    def poll(self, timeout: float) -> str | None:
        """"target-exited" or "debugger-died" when that happened, else None."""

    def exit_status(self) -> str: ...

    def stop_target(self) -> bool:
        """Stop every thread for leaving; False if the operator or the debugger is gone."""

    def write_marker(self) -> int:
        """Have {"marker": n} written after every hit so far; returns n."""

    def detach(self) -> int:
        """Remove every breakpoint and detach, leaving the operator running; returns how
        many breakpoints were removed."""

    def set_capture(self, on: bool) -> None:
        """Turn optional decoding (names, error messages) on or off while running."""

    def cpu_seconds(self) -> float:
        """The pause budget's measure of the operator's time held by the tracer so far: the
        debugger's CPU time (it works only while a thread is stopped for it), or for uprobes
        the hits times their measured cost."""

    def alive(self) -> bool:
        """The debugger still answers (so a detach can still be tried)."""

    def close(self) -> None:
        """End the debugger process; only after detaching."""
