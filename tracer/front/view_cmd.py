"""`tracer view FILE`: a recorded trace in the live screen."""

from __future__ import annotations

import click


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Replay this many times faster than it happened.")
@click.option("--summary", is_flag=True, help="Print the end state once instead of replaying.")
def view(file: str, speed: float, summary: bool) -> None:
    """Show a recorded trace in the live screen: replayed, or its end state (--summary)."""
    from tracer.front.live.replay import view as replay_view

    replay_view(file, speed, summary)
