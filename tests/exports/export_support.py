"""Helpers for the export and plot tests: the real `tracer` entry point in-process, a test
OTLP/HTTP receiver on loopback, and independent readings of trace files."""

from __future__ import annotations

import io
import json
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import tracer.cli
from tracer.front.export_cmd import export
from tracer.front.plot_cmd import plot

SPAN_FIELDS = ("request", "result", "error", "panic")


def read_trace_lines(path: Path) -> tuple[dict, list[dict], dict | None]:
    """(header, spans, end) read with plain json, independent of the code under test."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    spans = [r for r in records if r["type"] == "span"]
    ends = [r for r in records if r["type"] == "end"]
    return records[0], spans, (ends[0] if ends else None)


def wall_offset(header: dict) -> int:
    return header["clock"]["realtime_ns"] - header["clock"]["monotonic_ns"]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """`tracer ARGS` through tracer.cli.main, the real entry point (one-line errors, exit 2),
    with this package's commands registered as the lead registers them."""
    for command in (export, plot):
        if command.name not in tracer.cli.cli.commands:
            tracer.cli.cli.add_command(command)
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["tracer", *args]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            tracer.cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: CliResult, *words: str) -> None:
    assert result.code == 2, (result.code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tracer: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def files_in(folder: Path) -> set[str]:
    """Every file name, hidden ones too: a leftover temporary file counts."""
    return {p.name for p in folder.iterdir()}


@dataclass
class Receiver:
    """What the test OTLP/HTTP receiver got, and how it answers."""

    url: str
    requests: list[tuple[str, dict, bytes]] = field(default_factory=list)
    status: int = 200
    reply: bytes = b""


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer, threading.Thread]:
    """An OTLP/HTTP receiver on 127.0.0.1, an ephemeral port: keeps every request."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    state = Receiver(url="")
    state.reply = ExportTraceServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append((self.path, dict(self.headers), body))
            self.send_response(state.status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(state.reply)))
            self.end_headers()
            self.wfile.write(state.reply)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    return state, server, thread
