"""`tracer receive -- COMMAND`: record the stream of a `tracer agent` that COMMAND starts
somewhere (kubectl exec -i, ssh), as if attached locally."""

from __future__ import annotations

import click

from tracer.errors import UserError
from tracer.front.display import Display, receiver_screen
from tracer.front.prepare import default_output
from tracer.output import check_output


def _key_values(pairs: tuple[str, ...], option: str) -> dict:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{option} {pair!r}: give KEY=VALUE")
        values[key] = value
    return values


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--output", "-o", metavar="FILE",
              help="Trace file (JSON Lines). Default: trace-agent-TIME.jsonl here.")
@click.option("--force", is_flag=True,
              help="Replace an existing --output that is not a trace (or a link itself).")
@click.option("--duration", "-d", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Stop the agent this many seconds after it attached.")
@click.option("--quiet", "-q", is_flag=True, help="Print no line per call.")
@click.option("--plain", is_flag=True,
              help="A line per finished call instead of the live screen on a terminal.")
@click.option("--via", "via", multiple=True, metavar="KEY=VALUE",
              help="Where the trace comes from, kept in the header's via (repeatable).")
@click.option("--tag", "tag", multiple=True, metavar="KEY=VALUE",
              help="Add KEY=VALUE to the header and every span (repeatable).")
def receive(command: tuple[str, ...], output: str | None, force: bool, duration: float | None,
            quiet: bool, plain: bool, via: tuple[str, ...], tag: tuple[str, ...]) -> None:
    """Run COMMAND (after `--`), which starts `tracer agent` somewhere, and record what the
    agent streams as if attached locally; Ctrl-C or --duration stop the agent, which
    detaches. E.g. tracer receive -- ssh node sudo tracer agent 4242"""
    from tracer.remote.receiver import ProcessStream

    where = {"command": list(command), **_key_values(via, "--via")}
    tags = _key_values(tag, "--tag")
    out = check_output(output or default_output("agent", "remote"), "--output", force)
    receive_stream(ProcessStream(list(command)), out, duration, quiet, plain, where, tags)


def receive_stream(stream, output: str, duration: float | None, quiet: bool, plain: bool,
                   via: dict | None = None, tags: dict | None = None) -> None:
    """Record an agent's stream into `output`, shown like a local run (lines or the live
    screen) and ended with the same summary line and exit status."""
    from tracer.remote.receiver import Receiver

    display = Display(quiet, plain)
    receiver = Receiver(stream, output, via=via, tags=tags, duration=duration,
                        on_span=display.on_span, on_status=display.on_status)
    display.finish(display.run(receiver, receiver_screen(receiver)))
