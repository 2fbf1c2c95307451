"""Recording an agent's stream where the user is: what `tracer receive` and `tracer attach
POD --agent ...` share. (The agent's arguments: front/options.py, TraceOptions.agent_args.)"""

from __future__ import annotations

from tracer.front.display import Display, receiver_screen


def receive_stream(stream, output: str, duration: float | None, quiet: bool, plain: bool,
                   via: dict | None = None, tags: dict | None = None) -> None:
    """Record an agent's stream into `output`, shown like a local run (lines or the live
    screen) and ended with the same summary line and exit status."""
    from tracer.remote.receiver import Receiver

    display = Display(quiet, plain)
    receiver = Receiver(stream, output, via=via, tags=tags, duration=duration,
                        on_span=display.on_span, on_status=display.on_status)
    display.finish(display.run(receiver, receiver_screen(receiver)))
