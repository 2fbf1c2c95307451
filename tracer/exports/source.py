"""Reading a trace file for an export: checked up front, then spans streamed one by one.

Exports of large traces (a million spans is a 400 MB file) should not hold every span as a
dict at once, so the file is read as a stream; the header is read and checked first, so a
foreign or empty file is refused before any output is created.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from tracer.errors import UserError
from tracer.session.tracefile import SCHEMA_VERSION, iter_records


@dataclass
class TraceStream:
    path: str
    header: dict
    end: dict | None = None  # set once spans() has run to the end
    truncated: bool = False  # the file ends mid-line (the run did not end cleanly)
    last_ns: int = 0  # the latest monotonic time seen in any span

    @property
    def clock_offset(self) -> int:
        """Add to a CLOCK_MONOTONIC span time to get wall-clock (CLOCK_REALTIME) ns."""
        clock = self.header.get("clock") or {}
        return int(clock.get("realtime_ns", 0)) - int(clock.get("monotonic_ns", 0))

    @property
    def start_ns(self) -> int | None:
        """Monotonic ns of the attach (None in a header with no clock)."""
        clock = self.header.get("clock") or {}
        return clock.get("monotonic_ns")

    def end_ns(self) -> int:
        """When the run ended (monotonic ns): the end line's clock, else the last time seen.

        Unfinished spans are drawn up to here. Valid after spans() has been consumed."""
        clock = (self.end or {}).get("clock") or {}
        return max(int(clock.get("monotonic_ns", 0)), self.last_ns)

    def spans(self) -> Iterator[dict]:
        """Every span line, in file order (the order calls finished)."""
        try:
            for record, cut in iter_records(self.path):
                if cut:
                    self.truncated = True
                    return
                if not isinstance(record, dict):
                    raise UserError(f"{self.path} is not a tracer trace file "
                                    "(a line is not a JSON object)")
                kind = record.get("type")
                if kind == "span":
                    if not isinstance(record.get("start_ns"), int):
                        raise UserError(f"{self.path}: span {record.get('id')} has no start_ns")
                    self.last_ns = max(self.last_ns, record["start_ns"], record.get("end_ns") or 0)
                    yield record
                elif kind == "end":
                    self.end = record
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{self.path} is not a tracer trace file "
                            "(a line is not JSON)") from None
        except OSError as exc:
            raise UserError(f"cannot read {self.path}: {exc.strerror}") from None


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
        raise UserError(f"{path} is not a tracer trace file (line 1 is no header)")
    schema = header.get("schema")
    if isinstance(schema, int) and schema > SCHEMA_VERSION:
        raise UserError(f"{path} was written by a newer tracer (schema {schema}): "
                        "update tracer to read it")
    return header


def open_trace(path: str) -> TraceStream:
    return TraceStream(path, parse_header(path, check_readable(path)))
