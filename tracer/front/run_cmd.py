"""`tracer run -- COMMAND`: start a program under the tracer."""

from __future__ import annotations

import click

from tracer.front.options import TraceOptions, trace_options
from tracer.front.prepare import default_output, prepare_command
from tracer.front.tracing import trace_here
from tracer.output import check_output


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@trace_options
def run(command: tuple[str, ...], trace: TraceOptions) -> None:
    """Start COMMAND under the tracer (use `--` before it) and record from its first call.

    The program ends with the run (Ctrl-C, --duration), like a shell's foreground job."""
    prepared = prepare_command(command, trace)
    out = check_output(trace.output or default_output(prepared.target.name, "run"),
                       "--output", trace.force)
    trace_here(prepared, trace, out)
