"""CSV, one row per span: every field flattened (`request.namespace`, `error.type`, `args.0`),
plus the start and end in wall-clock time (`start_utc`, `end_utc`, ISO-8601 UTC to the ns, after
`duration_ns`).

Columns are the schema's fields in a fixed order (those whose field appears in the trace,
so a native trace has no `request.*` columns), then any field a newer tracer added, so
nothing in the file is dropped. Finding those takes a first pass over the file; it keeps
memory flat for traces of millions of spans.
"""

from __future__ import annotations

import datetime as dt
from typing import IO

from tracer.exports.source import TraceStream

# Schema field -> its columns, in output order. Wall-clock columns follow duration_ns.
KNOWN: dict[str, list[str]] = {
    "id": ["id"],
    "function": ["function"],
    "status": ["status"],
    "start_ns": ["start_ns"],
    "end_ns": ["end_ns"],
    "duration_ns": ["duration_ns"],
    "goroutine": ["goroutine"],
    "thread": ["thread"],
    "request": ["request.namespace", "request.name"],
    "result": ["result.requeue", "result.requeue_after_ns"],
    "error": ["error.type", "error.message"],
    "panic": ["panic.type", "panic.message"],
    "args": ["args.0", "args.1"],
    "return": ["return"],
}
WALL = ["start_utc", "end_utc"]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def flatten(value: object, prefix: str, into: dict[str, object]) -> dict[str, object]:
    """Nested objects and lists become dotted columns; a null object is a null column."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(item, f"{prefix}.{key}" if prefix else str(key), into)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            flatten(item, f"{prefix}.{i}", into)
    else:
        into[prefix] = value
    return into


def iso_utc(wall_ns: int) -> str:
    """`2023-01-17T13:45:57.861234567Z`: datetime holds µs, so the ns are added by hand."""
    seconds, frac = divmod(wall_ns, 1_000_000_000)
    return f"{_EPOCH + dt.timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}.{frac:09d}Z"


def columns(stream: TraceStream) -> list[str]:
    present: set[str] = set()
    extra: dict[str, None] = {}  # ordered set
    known_columns = {c for cols in KNOWN.values() for c in cols}
    for span in stream.spans():
        present.update(span)
        for key in flatten({k: v for k, v in span.items() if k != "type"}, "", {}):
            if key not in known_columns:
                extra[key] = None
    out: list[str] = []
    for field, cols in KNOWN.items():
        if field in present:
            out.extend(cols)
        if field == "duration_ns":
            out.extend(WALL)
    # A null object flattens to its own name (`error`); its fields are the columns.
    out.extend(key for key in extra if key not in KNOWN
               and not any(other.startswith(key + ".") for other in extra))
    return out


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


class _Writer:
    """csv.writer's minimal quoting, and also for a bare CR: with "\n" line ends Python's
    writer leaves `a\rb` unquoted, and readers then split the row (403 spans read back as
    470 rows)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    @staticmethod
    def field(value: object) -> str:
        text = str(value)
        if any(c in text for c in ',"\r\n'):
            return '"' + text.replace('"', '""') + '"'
        return text

    def writerow(self, cells: list) -> None:
        self.out.write(",".join(self.field(c) for c in cells) + "\n")


def write_csv(stream: TraceStream, out: IO[str]) -> int:
    """Returns the number of rows (spans) written."""
    header = columns(stream)
    offset = stream.clock_offset
    writer = _Writer(out)
    writer.writerow(header)
    rows = 0
    for span in stream.spans():
        flat = flatten({k: v for k, v in span.items() if k != "type"}, "", {})
        flat["start_utc"] = iso_utc(span["start_ns"] + offset)
        end = span.get("end_ns")
        flat["end_utc"] = iso_utc(end + offset) if end is not None else None
        writer.writerow([_cell(flat.get(col)) for col in header])
        rows += 1
    return rows
