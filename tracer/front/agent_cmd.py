"""`tracer agent`: trace a process and stream the trace to a tracer elsewhere.

The agent runs next to the operator (an ephemeral container in its pod, or any shell on its
machine) and writes every trace line to its standard output; `tracer receive -- COMMAND`
(front/receive_cmd.py) records what it streams.
"""

from __future__ import annotations

import sys

import click

from tracer.errors import UserError
from tracer.front.display import FAILED_REASONS
from tracer.front.options import TraceOptions, trace_options
from tracer.output import check_output
from tracer.terminal import echo


@click.command()
@click.argument("pid", type=int, required=False)
@trace_options
@click.option("--no-wait", is_flag=True,
              help="Trace at once instead of waiting for the local tracer's start line.")
@click.option("--container-id", metavar="ID",
              help="Trace this container's process (containerd://ID or a bare id), found "
                   "through /proc on this node: for an agent in the host's PID namespace.")
def agent(pid: int | None, no_wait: bool, container_id: str | None,
          trace: TraceOptions) -> None:
    """Trace PID (by default the one other process in this PID namespace) for a tracer
    elsewhere: every trace line goes to standard output as JSON Lines.

    Run by `tracer attach POD --agent ...` or `tracer receive -- COMMAND`. Standard input
    carries the local tracer's start and stop; its end stops the agent, which detaches.
    --output also keeps a copy of the trace here; --quiet and --plain change nothing."""
    from tracer.backends.select import choose_backend
    from tracer.front.prepare import prepare_process
    from tracer.remote.sender import Link, pick_operator, stream_trace
    from tracer.targets.containers import container_pid

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
        prepared = prepare_process(pid, trace)
        if prepared.plan.choice:
            link.status(prepared.plan.choice)
        copy = check_output(trace.output, "--output", trace.force) if trace.output else None
        backend = choose_backend(trace.backend, prepared.info, trace.backend_options)
        outcome = stream_trace(link, prepared.target, prepared.info, prepared.plan, copy,
                               trace.duration, backend, trace.budget)
    except UserError as exc:
        link.error(str(exc))
        raise
    # The agent's own record of how it ended, for `kubectl logs` of its container.
    echo(f"tracer agent ended ({outcome.reason}): {outcome.spans} spans, "
         f"{outcome.unfinished} unfinished, code restored: {outcome.code_restored}", err=True)
    if outcome.code_restored is False or outcome.reason in FAILED_REASONS:
        sys.exit(1)
