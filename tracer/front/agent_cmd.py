"""`tracer agent`: trace a process and stream the trace; `tracer receive`: record a stream.

The agent runs next to the operator (an ephemeral container in its pod, or any shell on its
machine) and writes every trace line to its standard output; `tracer receive -- COMMAND`
runs a command that starts an agent somewhere (kubectl exec -i, ssh) and records what it
streams as if attached locally.
"""

from __future__ import annotations

import sys

import click

from tracer.cli import _analyze, _default_output, trace_options
from tracer.errors import UserError
from tracer.front.display import FAILED_REASONS
from tracer.front.receive import receive_stream
from tracer.output import check_output
from tracer.terminal import echo


def _key_values(pairs: tuple[str, ...], option: str) -> dict:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{option} {pair!r}: give KEY=VALUE")
        values[key] = value
    return values


@click.command()
@click.argument("pid", type=int, required=False)
@trace_options
@click.option("--no-wait", is_flag=True,
              help="Trace at once instead of waiting for the local tracer's start line.")
@click.option("--container-id", metavar="ID",
              help="Trace this container's process (containerd://ID or a bare id), found "
                   "through /proc on this node: for an agent in the host's PID namespace.")
def agent(pid: int | None, no_wait: bool, container_id: str | None, **options) -> None:
    """Trace PID (by default the one other process in this PID namespace) for a tracer
    elsewhere: every trace line goes to standard output as JSON Lines.

    Run by `tracer attach POD --agent ...` or `tracer receive -- COMMAND`. Standard input
    carries the local tracer's start and stop; its end stops the agent, which detaches.
    --output also keeps a copy of the trace here; --quiet and --plain change nothing."""
    from tracer.probes.compile import compile_plan
    from tracer.remote.agent import Link, pick_operator, trace
    from tracer.session.session import Target
    from tracer.targets.containers import container_pid
    from tracer.targets.process import inspect_process

    link = Link()
    try:
        link.handshake(wait=not no_wait)
        if container_id is not None:
            if pid is not None:
                raise UserError("give a PID or --container-id, not both")
            pid, why = container_pid(container_id)
            link.status(why)
        elif pid is None:
            pid, why = pick_operator()
            link.status(why)
        # The same choice of functions as `tracer attach PID`.
        proc = inspect_process(pid)
        info = _analyze(proc.exe, shown=proc.exe_target)
        plan = compile_plan(info, options["symbol"], capture_args=not options["no_args"],
                            probe=options.get("probe"))
        if getattr(plan, "choice", None):
            link.status(plan.choice)
        info.path = plan.binary = proc.exe
        output = options["output"]
        copy = check_output(output, "--output", options["force"]) if output else None
        target = Target(pid=pid, name=proc.name, exe=proc.exe_target)
        outcome = trace(link, target, info, plan, copy, options["duration"],
                        options["backend"], (options["max_stopped"], options["budget_window"]))
    except UserError as exc:
        link.error(str(exc))
        raise
    # The agent's own record of how it ended, for `kubectl logs` of its container.
    echo(f"tracer agent ended ({outcome.reason}): {outcome.spans} spans, "
               f"{outcome.unfinished} unfinished, code restored: {outcome.code_restored}",
               err=True)
    if outcome.code_restored is False or outcome.reason in FAILED_REASONS:
        sys.exit(1)


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
    out = check_output(output or _default_output("agent", "remote"), "--output", force)
    receive_stream(ProcessStream(list(command)), out, duration, quiet, plain, where, tags)
