"""The trace file: JSON Lines, one object per line, flushed as it goes.

A header line, then span lines, then an end line saying how the run ended. A file cut at any
byte reads back up to its last whole line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tracer.errors import UserError

SCHEMA_VERSION = 1


def clock_pair() -> dict:
    """Both clocks read back to back, so monotonic span times map to wall time."""
    return {"monotonic_ns": time.monotonic_ns(), "realtime_ns": time.time_ns()}


class TraceWriter:
    """Writes lines as they come; readable by the user alone, as traces hold object names."""

    def __init__(self, path: str, on_error=None) -> None:
        self.path = path
        self.on_error = on_error
        self.error: OSError | None = None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise UserError(f"cannot write the trace file {path}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()
        self.lines = 0
        self.bytes = 0
        self.closed = False

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self.closed:
                return
            try:
                self._file.write(line)
            except OSError as exc:
                # Disk full or gone: stop recording, keep what is on disk, and say why; the
                # session detaches rather than run the operator's breakpoints for nothing.
                self.error = exc
                self.closed = True
                try:
                    self._file.close()
                except OSError:
                    pass
                if self.on_error:
                    self.on_error(exc)
                return
            self.lines += 1
            self.bytes += len(line)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                try:
                    self._file.flush()
                    os.fsync(self._file.fileno())
                    self._file.close()
                except OSError as exc:
                    self.error = exc


@dataclass
class Trace:
    path: str
    header: dict | None = None
    spans: list[dict] = field(default_factory=list)
    end: dict | None = None
    truncated: bool = False
    others: list[dict] = field(default_factory=list)


def iter_records(path: str) -> Iterator[tuple[dict | None, bool]]:
    """(record, cut) for each line; a last line with no newline is a cut one."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                yield None, True
                return
            yield json.loads(raw), False


def check_readable(path: str, what: str = "trace file") -> bytes:
    """The file's first line; a one-line UserError if it is missing, a folder or empty."""
    if not os.path.exists(path):
        raise UserError(f"no such {what}: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a {what}")
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if not first.strip():
        raise UserError(f"{path} is empty")
    return first


def parse_header(path: str, first: bytes) -> dict:
    """The header line, or a UserError saying why the file is not a trace."""
    if not first.endswith(b"\n"):
        raise UserError(f"{path} is cut inside its header line: it holds no call")
    try:
        header = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not a tracer trace file (line 1 is not JSON)") from None
    if not isinstance(header, dict) or header.get("type") != "header":
        raise UserError(f"{path} is not a tracer trace file (no header line)")
    schema = header.get("schema")
    if isinstance(schema, int) and schema > SCHEMA_VERSION:
        raise UserError(f"{path} was written by a newer tracer (schema {schema}): "
                        "update tracer to read it")
    return header


def read_trace(path: str) -> Trace:
    trace = Trace(path, header=parse_header(path, check_readable(path)))
    try:
        for record, cut in iter_records(path):
            if cut:
                trace.truncated = True
                break
            kind = record.get("type") if isinstance(record, dict) else None
            if kind == "header":
                continue
            if kind == "span":
                trace.spans.append(record)
            elif kind == "end":
                trace.end = record
            else:
                trace.others.append(record)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not a tracer trace file (a line is not JSON)") from None
    return trace
