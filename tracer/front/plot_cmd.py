"""`tracer plot FILE -o out.png|out.svg`: a trace or a timestamps file as one figure."""

from __future__ import annotations

import os

import click

from tracer.errors import UserError
from tracer.terminal import echo

FORMATS = {".png": "png", ".svg": "svg"}
IMAGE_START = {"png": b"\x89PNG", "svg": b"<?xml"}


def image_format(output: str) -> str:
    fmt = FORMATS.get(os.path.splitext(output)[1].lower())
    if fmt is None:
        raise UserError(f"--output {output}: give a .png or .svg file name")
    return fmt


@click.command("plot")
@click.argument("file", metavar="FILE")
@click.option("--output", "-o", metavar="OUT", required=True,
              help="The image to write: .png or .svg.")
@click.option("--lanes", type=click.Choice(["object", "worker"]),
              help="Timeline lanes: one per reconciled object or one per goroutine/thread. "
                   "Default: object when there are at most 30 objects, else worker.")
@click.option("--force", is_flag=True,
              help="Replace an existing OUT that is not an image (or a link: the link itself).")
def plot(file: str, output: str, lanes: str | None, force: bool) -> None:
    """Plot a trace (or a timestamps file of reconcile starts) as one figure.

    Timeline of every call coloured by result; histogram of the intervals between
    consecutive starts; duration of each call over time (for timestamps files: each
    interval over time)."""
    fmt = image_format(output)
    from tracer.output import atomic_path, check_output, starts_with

    ours = starts_with(IMAGE_START[fmt])
    check_output(output, "--output", force, ours)  # before reading a large trace
    # A bare matplotlib Figure renders through its own Agg/SVG canvas: no backend, no display.
    from tracer.plots.data import load
    from tracer.plots.figure import build_figure

    data = load(file)
    fig = build_figure(data, lanes)
    with atomic_path(output, force, ours) as tmp:
        fig.savefig(tmp, format=fmt)
    echo(f"wrote {output} ({len(data)} {'starts' if data.starts_only else 'calls'})",
               err=True)
    if data.damage:
        echo(f"tracer: warning: {data.damage.message(file)}", err=True)
    if data.truncated:
        echo(f"note: {file} is cut mid-line (the run did not end cleanly): "
                   "its whole lines were plotted", err=True)
