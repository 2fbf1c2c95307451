"""`tracer report FILE...`: statistics and causes of recorded calls (or research timestamps)."""

from __future__ import annotations

import json
import math
import sys

import click

from tracer.errors import UserError
from tracer.output import atomic_path, check_output, starts_with
from tracer.terminal import echo

CAUSES_START = starts_with(b'{"file":')


def _seconds(option: str, value: float, minimum: float = 0.0) -> int:
    if not math.isfinite(value) or value < minimum:
        raise UserError(f"{option} {value}: give seconds >= {minimum:g}")
    return int(round(value * 1e9))


@click.command("report")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON (stable keys) instead of tables.")
@click.option("--changes", metavar="FILE",
              help="A timestamps file of changes; row i caused row i of the single reconcile "
                   "timestamps FILE: reports the change-to-reconcile latency.")
@click.option("--bins", metavar="N|EDGES",
              help="Interval histogram: N equal bins from min to max, or edges in seconds "
                   "(4.9,5.5). Default: about 10 round bins over the 1st..99th percentile.")
@click.option("--top", type=int, default=10, show_default=True, metavar="N",
              help="Objects shown in the text report (all are in --json).")
@click.option("--tolerance", type=float, default=0.1, show_default=True, metavar="SECONDS",
              help="How late a requeue or backoff may start and still count as its cause.")
@click.option("--backoff-base", type=float, default=0.005, show_default=True,
              metavar="SECONDS", help="The rate limiter's first backoff after a failure.")
@click.option("--backoff-cap", type=float, default=1000.0, show_default=True,
              metavar="SECONDS", help="The rate limiter's longest backoff.")
@click.option("--event-slack", type=float, default=0.01, show_default=True, metavar="SECONDS",
              help="How long after a call started a watch event may be stamped and still be "
                   "its cause: the tracer and the operator hear a change separately.")
@click.option("--causes-out", metavar="FILE",
              help="Write every call's cause and its evidence to FILE (JSON Lines).")
@click.option("--force", is_flag=True,
              help="Replace an existing --causes-out that is not one (or a link: the link "
                   "itself, never what it points to).")
def report(files: tuple[str, ...], as_json: bool, changes: str | None, bins: str | None,
           top: int, tolerance: float, backoff_base: float, backoff_cap: float,
           event_slack: float, causes_out: str | None, force: bool) -> None:
    """Statistics of the calls in trace FILEs (merged on one timeline) and why each happened.

    Per function and per object: calls, rate, durations, intervals between starts, idle time,
    concurrency, errors, requeues. Each call is attributed to requeue-after, requeue,
    error-backoff, change (a watch event in the trace) or unexplained.

    FILE may also be a timestamps file of earlier research (a `reconsile_dates` CSV of
    ISO-8601 times, or `YYYY-MM-DD HH:MM:SS.nnnnnnnnn` lines): start times only."""
    # Heavy imports here, so `tracer --help` stays fast.
    from rich.console import Console

    from tracer.analysis import causes, render
    from tracer.analysis import report as report_mod
    from tracer.analysis.load import load
    from tracer.analysis.timestamps import read_timestamps

    if top < 0:
        raise UserError(f"--top {top}: give 0 or more objects")
    settings = causes.Settings(
        backoff_base_ns=_seconds("--backoff-base", backoff_base, 1e-9),
        backoff_cap_ns=_seconds("--backoff-cap", backoff_cap, 1e-9),
        tolerance_ns=_seconds("--tolerance", tolerance),
        event_slack_ns=_seconds("--event-slack", event_slack))
    if settings.backoff_cap_ns < settings.backoff_base_ns:
        raise UserError("--backoff-cap must be at least --backoff-base")
    edges = report_mod.parse_bins(bins)
    if causes_out:
        check_output(causes_out, "--causes-out", force, CAUSES_START)  # before the work

    def warn(message: str) -> None:
        echo(f"tracer: warning: {message}", err=True)

    loaded = load(list(files), warn)
    change_starts = None
    if changes is not None:
        stamps = read_timestamps(changes)
        if stamps.truncated:
            warn(f"{changes} is cut mid-line: pairing its {len(stamps.starts_ns)} whole rows")
        change_starts = stamps.starts_ns
    result, frame = report_mod.build(loaded, bins=edges, settings=settings,
                                     changes=change_starts, changes_path=changes)
    if causes_out:
        _write_causes(frame, loaded, causes_out, force)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        # A file or pipe gets wide lines rather than rich's 80 columns.
        console = Console(file=sys.stdout, soft_wrap=True)
        if not console.is_terminal:
            console = Console(file=sys.stdout, soft_wrap=True, width=160)
        render.render(result, console, top=top)


def _write_causes(frame, loaded, path: str, force: bool) -> None:
    from tracer.analysis.report import evidence

    if "cause" not in frame.columns:
        raise UserError("--causes-out needs trace files: timestamps files have no causes")
    try:
        with atomic_path(path, force, CAUSES_START) as tmp:
            evidence(frame, loaded).write_ndjson(tmp)
    except OSError as exc:
        reason = exc.strerror or str(exc).splitlines()[0]
        raise UserError(f"cannot write --causes-out {path}: {reason}") from None
