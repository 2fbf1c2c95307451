"""The `tracer` command: a thin group. Each command lives in its own module under
tracer/front/ (attach_cmd, run_cmd, ...) and imports its heavy libraries only when it runs."""

from __future__ import annotations

import os
import sys

import click

from tracer.binary.model import BinaryError
from tracer.errors import EXIT_USAGE, UserError
from tracer.front.agent_cmd import agent
from tracer.front.attach_cmd import attach
from tracer.front.export_cmd import export
from tracer.front.plot_cmd import plot
from tracer.front.probes_cmd import probes
from tracer.front.receive_cmd import receive
from tracer.front.report_cmd import report
from tracer.front.run_cmd import run
from tracer.front.symbols_cmd import symbols
from tracer.front.view_cmd import view
from tracer.terminal import echo

MAX_MESSAGE = 600
COMMANDS = (attach, run, view, symbols, report, export, plot, probes, agent, receive)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracer")
def cli() -> None:
    """Trace the reconcile calls of a Kubernetes operator from outside, with no change to it.

    TRACER_DEBUG=1 shows the traceback of an internal error."""


for _command in COMMANDS:
    cli.add_command(_command)


def _fail(message: str) -> None:
    """One line on stderr, exit 2. The message may quote outside text (a probe file, a name
    from the operator): it is shown inert (tracer.terminal) and cut if it is huge."""
    if len(message) > MAX_MESSAGE:
        message = f"{message[:MAX_MESSAGE]}... ({len(message):,} characters)"
    echo(f"tracer: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except (UserError, BinaryError) as exc:
        _fail(str(exc))
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as exc:
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see `{ctx.command_path} --help`)"
        _fail(exc.format_message() + hint)
    except BrokenPipeError:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback; TRACER_DEBUG shows it
        if os.environ.get("TRACER_DEBUG"):
            raise
        echo(f"tracer: internal error: {type(exc).__name__}: {exc} "
             "(set TRACER_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
