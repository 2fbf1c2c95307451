"""Recording an agent's stream where the user is: what `tracer receive` and `tracer attach
POD --agent ...` share (importable without the command line, which imports the commands)."""

from __future__ import annotations

from tracer.front.display import Display, receiver_screen


def agent_args(pid: int | None = None, *, symbol: str | None = None, probe: str | None = None,
               no_args: bool = False, backend: str = "auto", max_stopped: float = 0.05,
               budget_window: float = 10.0, duration: float | None = None) -> list[str]:
    """The arguments after `tracer agent` that trace as the local command's options ask: for
    the agent container's args. The duration is usually the local side's to keep."""
    args = [] if pid is None else [str(pid)]
    for flag, value in (("--symbol", symbol), ("--probe", probe), ("--duration", duration)):
        if value is not None:
            args += [flag, str(value)]
    if no_args:
        args.append("--no-args")
    return args + ["--backend", backend,
                   "--max-stopped", f"{max_stopped * 100:g}%" if max_stopped else "off",
                   "--budget-window", f"{budget_window:g}"]


def receive_stream(stream, output: str, duration: float | None, quiet: bool, plain: bool,
                   via: dict | None = None, tags: dict | None = None) -> None:
    """Record an agent's stream into `output`, shown like a local run (lines or the live
    screen) and ended with the same summary line and exit status."""
    from tracer.remote.receiver import Receiver

    display = Display(quiet, plain)
    receiver = Receiver(stream, output, via=via, tags=tags, duration=duration,
                        on_span=display.on_span, on_status=display.on_status)
    display.finish(display.run(receiver, receiver_screen(receiver)))
