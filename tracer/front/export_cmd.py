"""`tracer export FILE --format chrome|csv|otlp|timestamps`: a trace in another tool's format."""

from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING

import click

from tracer.errors import UserError
from tracer.terminal import echo

if TYPE_CHECKING:
    from tracer.exports.source import TraceStream

FORMATS = ("chrome", "csv", "otlp", "timestamps")
SUFFIX = {"chrome": ".chrome.json", "csv": ".csv"}
TIMESTAMP_SUFFIX = {"csv": ".timestamps.csv", "lines": ".timestamps.txt"}
OURS = {"chrome": b'{"traceEvents":[', "csv": b"id,", "timestamps": b"reconsile_dates"}


def default_output(trace: str, fmt: str, style: str) -> str:
    """Next to the trace: run.jsonl -> run.chrome.json, run.csv, run.timestamps.csv."""
    stem, ext = os.path.splitext(trace)
    if ext not in (".jsonl", ".json", ".ndjson"):
        stem = trace
    return stem + (TIMESTAMP_SUFFIX[style] if fmt == "timestamps" else SUFFIX[fmt])


def otlp_endpoint(given: str | None) -> str:
    """--endpoint, else the OpenTelemetry SDKs' environment variables, else localhost."""
    from tracer.exports.otlp import DEFAULT_ENDPOINT

    if given:
        return given
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    return DEFAULT_ENDPOINT


def _check_options(fmt: str, output: str | None, endpoint: str | None,
                   style: str | None, batch_size: int | None) -> None:
    if fmt == "otlp" and output:
        raise UserError("--output does not apply to --format otlp: it sends to --endpoint")
    if fmt != "otlp" and (endpoint or batch_size):
        raise UserError("--endpoint and --batch-size apply to --format otlp only")
    if fmt != "timestamps" and style:
        raise UserError("--style applies to --format timestamps only")


def _ours(fmt: str, style: str):
    """What a file this export writes starts with: only such a file is replaced unasked."""
    if fmt == "timestamps" and style == "lines":
        return lambda first: re.match(rb"\d{4}-\d\d-\d\d \d", first) is not None
    return lambda first: first.startswith(OURS[fmt])


def _write(stream: TraceStream, fmt: str, output: str, style: str, force: bool) -> int:
    from tracer.output import STDOUT, atomic_path, open_output

    ours = _ours(fmt, style)
    if fmt == "timestamps":
        from tracer.analysis.timestamps import write_timestamps

        target = (contextlib.nullcontext("/dev/stdout") if output == STDOUT
                  else atomic_path(output, force, ours))
        with target as path:
            # Reconcile starts only: steps (child spans) are parts of them.
            reconciles = (s for s in stream.spans() if s.get("parent") is None)
            return write_timestamps(reconciles, path, style=style,
                                    clock=stream.header.get("clock"))
    if fmt == "chrome":
        from tracer.exports.chrome import write_chrome as writer
    else:
        from tracer.exports.csv_export import write_csv as writer
    # csv.writer wants newline="" so it alone decides line ends.
    with open_output(output, newline="" if fmt == "csv" else None, force=force,
                     ours=ours) as out:
        return writer(stream, out)


@click.command("export")
@click.argument("file", metavar="FILE")
@click.option("--format", "-f", "fmt", type=click.Choice(FORMATS),
              help="chrome: Trace Event JSON for Perfetto / chrome://tracing; csv: one row per "
                   "call; otlp: send OpenTelemetry spans; timestamps: start times in the "
                   "research formats.")
@click.option("--output", "-o", metavar="OUT",
              help="Output file (`-` for standard output). Default: next to FILE, "
                   "FILE.chrome.json, FILE.csv or FILE.timestamps.csv/.txt.")
@click.option("--endpoint", metavar="URL",
              help="OTLP/HTTP traces endpoint for --format otlp. Default: "
                   "$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, $OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces "
                   "or http://localhost:4318/v1/traces.")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="For --format otlp: spans per request (default 2000, about 1.2 MB).")
@click.option("--style", type=click.Choice(["csv", "lines"]),
              help="For --format timestamps: csv (header reconsile_dates, ISO-8601 ms, the "
                   "default) or lines (`2023-05-12 11:52:20.338366696`).")
@click.option("--force", is_flag=True,
              help="Replace an existing output that is not this kind of export (or a link: "
                   "the link itself, never what it points to).")
def export(file: str, fmt: str | None, output: str | None, endpoint: str | None,
           batch_size: int | None, style: str | None, force: bool) -> None:
    """Convert the trace FILE for another tool, or send it to an OpenTelemetry collector.

    Unfinished calls end at the end of the run and are marked `unfinished`."""
    from tracer.exports.source import open_trace

    if fmt is None:  # checked here: click's own message spans several lines
        raise UserError("--format is required: chrome, csv, otlp or timestamps")
    _check_options(fmt, output, endpoint, style, batch_size)
    stream = open_trace(file)
    if fmt == "otlp":
        from tracer.exports.otlp import BATCH, env_headers, send_otlp

        url = otlp_endpoint(endpoint)
        sent = send_otlp(stream, url, env_headers(), batch_size or BATCH)
        echo(f"sent {sent.spans} spans in {sent.requests} request(s) to {url}", err=True)
        if sent.rejected or sent.messages:
            why = "; ".join(sent.messages or []) or "no reason given"
            echo(f"warning: the receiver rejected {sent.rejected} spans: {why}", err=True)
    else:
        style = style or "csv"
        out = output or default_output(file, fmt, style)
        if os.path.abspath(out) == os.path.abspath(file):
            raise UserError(f"the output {out} is the trace itself: choose another --output")
        count = _write(stream, fmt, out, style, force)
        where = "standard output" if out == "-" else out
        hint = " (open it in https://ui.perfetto.dev)" if fmt == "chrome" else ""
        echo(f"wrote {count} {'starts' if fmt == 'timestamps' else 'spans'} to "
                   f"{where}{hint}", err=True)
    if stream.damage:
        echo(f"tracer: warning: {stream.damage.message(file)}", err=True)
    if stream.truncated:
        echo(f"note: {file} is cut mid-line (the run did not end cleanly): "
                   "its whole lines were exported", err=True)
