"""A run here: the session under the display (lines or the live screen), with the watch
events of the cluster beside it, and the one line that says how it ended."""

from __future__ import annotations

import os

from tracer.backends.select import choose_backend
from tracer.errors import UserError
from tracer.front.display import Display, Screen, session_screen
from tracer.front.options import TraceOptions
from tracer.front.prepare import Prepared
from tracer.output import create_private
from tracer.terminal import echo


def attach_failure(pid: int | None, exc: BaseException) -> UserError | None:
    """What really happened when a run failed before its trace began: the operator gone
    during the attach (gdb then says `/proc/N/exe: No such file` or the like), or another
    tracer that got there first (ptrace says EPERM, which gdb words as a permission
    problem even to root). None when neither is the case."""
    from tracer.targets.process import process_name, status_field, tracer_pid

    if pid is None:
        return None
    state = status_field(pid, "State")
    if state is None or state.startswith(("Z", "X")):
        return UserError(f"process {pid} exited while the tracer was attaching: nothing was "
                         "traced")
    other = tracer_pid(pid)
    if other and other != os.getpid():
        return UserError(f"process {pid} is already traced by PID {other} "
                         f"({process_name(other)}): a process can have one tracer; stop that "
                         "one first")
    return None


def run_watched(display: Display, run, screen: Screen, watcher):
    """`run` under the display, with the watch events recorded into it meanwhile."""
    if watcher is not None:
        watcher.start(run.record, display.on_status)
    try:
        return display.run(run, screen)
    finally:
        if watcher is not None:
            watcher.stop()
            if watcher.events:
                echo(f"recorded {watcher.events} watch event(s) of "
                     f"{', '.join(watcher.describe())}", err=True)


def trace_here(prepared: Prepared, trace: TraceOptions, output: str, watcher=None) -> None:
    """Trace a process of this machine (or a command started here) into `output`."""
    from tracer.session.session import Session

    target, info, plan = prepared.target, prepared.info, prepared.plan
    display = Display(trace.quiet, trace.plain)
    backend = choose_backend(trace.backend, info, trace.backend_options)
    if plan.choice:
        display.on_status(plan.choice)  # once the backend is known to be there: one error line
    for notice in backend.notices:
        display.on_status(notice)
    if display.live and target.argv:
        # The program's own output would tear the screen apart: keep it beside the trace.
        target.output_log = output + ".out"
        # Made here, new and 0600, never through a link planted at that name; the session
        # then opens the tracer's own file.
        try:
            os.close(create_private(target.output_log))
        except OSError as exc:
            raise UserError(f"cannot write {target.output_log}: {exc.strerror}") from None
        display.messages.append(f"the program's output is in {target.output_log}")
    session = Session(target, info, plan, output, trace.duration, display.on_span,
                      display.on_status, backend=backend, budget=trace.budget)
    try:
        outcome = run_watched(display, session, session_screen(session), watcher)
    except Exception as exc:
        if session.writer is not None:
            raise
        # Nothing traced yet: if the operator went away or another tracer won the race,
        # that is the one line to say, whatever the debugger made of it.
        better = attach_failure(target.pid, exc)
        if better is None:
            raise
        raise better from None
    display.finish(outcome)
