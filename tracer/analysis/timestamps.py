"""Reconcile start times in the two text formats earlier research used, so its notebooks work.

- "csv": a header line `reconsile_dates` (sic, as the research spelled it), then one ISO-8601
  UTC time with milliseconds per row: `2023-01-17T13:45:57.861Z`.
- "lines": no header, one UTC time with nanoseconds per line: `2023-05-12 11:52:20.338366696`.

Times here are wall-clock (CLOCK_REALTIME) ns since the epoch. Traces record CLOCK_MONOTONIC;
the header's `clock` pair (both clocks read back to back) maps one to the other.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from tracer.errors import UserError

CSV_HEADER = "reconsile_dates"
Style = Literal["csv", "lines"]
STYLES: tuple[str, ...] = ("csv", "lines")

# Either style's row (and ISO variants without Z or with fewer digits), for sniffing a file.
_ROW = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d{1,9})?Z?$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def sniff(first_line: str) -> Style | None:
    """The style a file's first line shows, or None if it is no timestamps file."""
    line = first_line.strip()
    if line == CSV_HEADER:
        return "csv"
    if _ROW.match(line):
        return "csv" if line.endswith("Z") else "lines"
    return None


def _split(realtime_ns: int) -> tuple[dt.datetime, int]:
    seconds, frac_ns = divmod(realtime_ns, 1_000_000_000)
    return _EPOCH + dt.timedelta(seconds=seconds), frac_ns


def format_iso_ms(realtime_ns: int) -> str:
    """`2023-01-17T13:45:57.861Z`: milliseconds truncated, as JavaScript's toISOString()."""
    when, frac_ns = _split(realtime_ns)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{frac_ns // 1_000_000:03d}Z"


def format_ns(realtime_ns: int) -> str:
    """`2023-05-12 11:52:20.338366696`."""
    when, frac_ns = _split(realtime_ns)
    return f"{when:%Y-%m-%d %H:%M:%S}.{frac_ns:09d}"


def parse_time(text: str) -> int | None:
    """Either style's row as realtime ns; None if it is not one. Exact to the nanosecond."""
    line = text.strip()
    if not _ROW.match(line):
        return None
    try:
        days = _days(line[:10])
        hour, minute, second = int(line[11:13]), int(line[14:16]), int(line[17:19])
    except ValueError:
        return None  # e.g. month 13
    if hour > 23 or minute > 59 or second > 60:
        return None
    frac = line[20:].rstrip("Z")
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") if frac else 0)


@functools.lru_cache(maxsize=4096)
def _days(date: str) -> int:
    """Days since the epoch; cached, as a file's rows share few dates."""
    return (dt.date.fromisoformat(date) - _EPOCH.date()).days


def write_timestamps(spans_or_starts: Iterable[dict | int], path: str | os.PathLike,
                     style: Style = "lines", clock: dict | None = None) -> int:
    """Write the start times, earliest first, in one research format; returns the rows written.

    `spans_or_starts`: trace records (those with a `start_ns` are used, so a whole trace's
    records can be passed; unfinished calls started too, so they count) or plain start times
    in ns. `clock`: the trace header's `clock` pair; starts are CLOCK_MONOTONIC and are moved
    by `realtime_ns - monotonic_ns`. None means the starts are wall-clock ns already.
    """
    if style not in STYLES:
        raise UserError(f"unknown timestamps style {style!r}: use csv or lines")
    offset = 0 if clock is None else int(clock["realtime_ns"]) - int(clock["monotonic_ns"])
    starts = []
    for item in spans_or_starts:
        if isinstance(item, dict):
            if item.get("start_ns") is None:
                continue  # header, end and event records
            item = item["start_ns"]
        starts.append(int(item) + offset)
    starts.sort()
    fmt = format_iso_ms if style == "csv" else format_ns
    try:
        with open(path, "w", encoding="ascii", newline="\n") as f:
            if style == "csv":
                f.write(CSV_HEADER + "\n")
            f.writelines(fmt(t) + "\n" for t in starts)
    except OSError as exc:
        raise UserError(f"cannot write {os.fspath(path)}: {exc.strerror}") from None
    return len(starts)


@dataclass
class Timestamps:
    path: str
    style: Style
    starts_ns: list[int]  # realtime ns, in file order
    truncated: bool = False  # the last line was cut and was left out


def read_timestamps(path: str | os.PathLike) -> Timestamps:
    """Read either style (detected from the first line); UserError on anything else."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"no such file: {name}") from None
    except IsADirectoryError:
        raise UserError(f"{name} is a folder, not a timestamps file") from None
    except OSError as exc:
        raise UserError(f"cannot read {name}: {exc.strerror}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UserError(f"{name} is not a timestamps file (not plain text)") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise UserError(f"{name} is empty")
    style = sniff(lines[0])
    if style is None:
        raise UserError(f"{name} is not a timestamps file (first line {lines[0][:40]!r})")
    rows = lines[1:] if lines[0].strip() == CSV_HEADER else lines
    starts: list[int] = []
    truncated = False
    for number, line in enumerate(rows, start=len(lines) - len(rows) + 1):
        if not line.strip():
            continue
        value = parse_time(line)
        if value is None:
            if number == len(lines) and not text.endswith("\n"):
                truncated = True  # a file cut mid-row: keep the whole rows
                break
            raise UserError(f"{name} line {number} is not a timestamp: {line[:40]!r}")
        starts.append(value)
    if not starts:
        raise UserError(f"{name} holds no timestamps")
    return Timestamps(name, style, starts, truncated)
