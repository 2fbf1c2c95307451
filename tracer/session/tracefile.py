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
            if path.startswith("/dev/fd/"):
                # A stream the caller opened (`tracer agent` writes to its stdout): written
                # as it is, nothing created or renamed.
                fd = os.open(path, os.O_WRONLY)
            else:
                # A new 0600 file renamed over the path: never through a link, never another
                # file truncated in place (tracer.output.create_private).
                from tracer.output import create_private

                fd = create_private(path)
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


# Times are CLOCK_MONOTONIC (or, for wall clocks, CLOCK_REALTIME) ns: from 0 to 2^62 (146
# years). Anything else in a trace is damage, never a figure; the bound also keeps every sum
# of a time and the header's clock offset inside a 64-bit integer.
MAX_NS = 1 << 62


def is_time(value: object) -> bool:
    return type(value) is int and 0 <= value < MAX_NS


def _int_or_none(value: object) -> bool:
    return value is None or (type(value) is int and abs(value) < MAX_NS)


def _str_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


def _typed(value: object, field_types: dict[str, object]) -> bool:
    """A dict (or None) whose listed fields have the given kinds."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    return all(check(value.get(key)) for key, check in field_types.items())


_VALUE = {"type": _str_or_none, "message": _str_or_none}
_REQUEST = {"namespace": _str_or_none, "name": _str_or_none}
_RESULT = {"requeue": lambda v: v is None or isinstance(v, bool),
           "requeue_after_ns": _int_or_none}


def record_problem(record: object) -> str | None:
    """Why a trace line cannot be used: "bad" (not a well-formed record), "damaged" (a span
    or event whose times are out of range or end before they start), or None."""
    if not isinstance(record, dict):
        return "bad"
    kind = record.get("type")
    if kind == "span":
        if not (isinstance(record.get("function"), str) and _int_or_none(record.get("id"))
                and _int_or_none(record.get("parent")) and _int_or_none(record.get("depth"))
                and _int_or_none(record.get("goroutine")) and _int_or_none(record.get("thread"))
                and _int_or_none(record.get("duration_ns"))
                and _str_or_none(record.get("status"))
                and _typed(record.get("request"), _REQUEST)
                and (record.get("request") is None or _REQUEST.keys() <= record["request"].keys())
                and _typed(record.get("result"), _RESULT)
                and _typed(record.get("error"), _VALUE) and _typed(record.get("panic"), _VALUE)
                and (record.get("error") is None or isinstance(record["error"].get("type"), str))
                and (record.get("panic") is None or isinstance(record["panic"].get("type"), str))
                and (record.get("args") is None or isinstance(record.get("args"), list))):
            return "bad"
        start, end = record.get("start_ns"), record.get("end_ns")
        if not is_time(start) or (end is not None and (not is_time(end) or end < start)):
            return "damaged"
        return None
    if kind == "event":
        if not all(_str_or_none(record.get(k)) for k in ("kind", "namespace", "name", "event")):
            return "bad"
        return None if is_time(record.get("ts_ns")) else "damaged"
    if kind == "end":
        clock = record.get("clock")
        if clock is not None and not valid_clock(clock):
            return "damaged"
    return None


def valid_clock(clock: object) -> bool:
    return (isinstance(clock, dict) and is_time(clock.get("monotonic_ns"))
            and is_time(clock.get("realtime_ns")))


@dataclass
class Damage:
    """Lines a reader left out: counted, with the first line number of each kind."""

    bad: int = 0
    first_bad: int | None = None
    damaged: int = 0
    first_damaged: int | None = None

    def add(self, problem: str, number: int) -> None:
        if problem == "bad":
            self.bad += 1
            self.first_bad = self.first_bad or number
        else:
            self.damaged += 1
            self.first_damaged = self.first_damaged or number

    def __bool__(self) -> bool:
        return bool(self.bad or self.damaged)

    def message(self, path: str) -> str:
        """One line for the user, e.g. `t.jsonl: 3 lines skipped, not trace records (first:
        line 7); 1 span or event damaged (ends before it starts or a time out of range), left
        out (first: line 9)`."""
        parts = []
        if self.bad:
            parts.append(f"{self.bad} line{'s' if self.bad > 1 else ''} skipped, not trace "
                         f"records (first: line {self.first_bad})")
        if self.damaged:
            parts.append(f"{self.damaged} span{'s' if self.damaged > 1 else ''} or events "
                         "damaged (ends before it starts or a time out of range), left out "
                         f"(first: line {self.first_damaged})")
        return f"{path}: " + "; ".join(parts)


def parse_line(raw: bytes) -> object:
    """One line as JSON; ValueError for anything that is not (also for absurd nesting)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(str(exc)) from None


def iter_valid(path: str, damage: Damage) -> Iterator[tuple[dict | None, bool, int]]:
    """(record, cut, line number) for each usable line after the header; lines that are not
    well-formed records, and damaged ones, are counted in `damage` and skipped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                yield None, True, number
                return
            if number == 1 or not raw.strip():
                continue
            try:
                record = parse_line(raw)
            except ValueError:
                damage.add("bad", number)
                continue
            problem = record_problem(record)
            if problem:
                damage.add(problem, number)
                continue
            yield record, False, number


@dataclass
class Trace:
    path: str
    header: dict | None = None
    spans: list[dict] = field(default_factory=list)
    end: dict | None = None
    truncated: bool = False
    others: list[dict] = field(default_factory=list)
    damage: Damage = field(default_factory=Damage)


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
        header = parse_line(first)
    except ValueError:
        raise UserError(f"{path} is not a tracer trace file (line 1 is not JSON)") from None
    if not isinstance(header, dict) or header.get("type") != "header":
        raise UserError(f"{path} is not a tracer trace file (no header line)")
    if "clock" in header and not valid_clock(header["clock"]):
        raise UserError(f"{path}: its header is damaged (the clock pair is not two times in "
                        "ns): the spans cannot be placed in time")
    for key, kind in (("target", dict), ("binary", dict), ("functions", list)):
        if header.get(key) is not None and not isinstance(header[key], kind):
            raise UserError(f"{path}: its header is damaged ({key} is not a JSON "
                            f"{'object' if kind is dict else 'list'})")
    schema = header.get("schema")
    if isinstance(schema, int) and schema > SCHEMA_VERSION:
        raise UserError(f"{path} was written by a newer tracer (schema {schema}): "
                        "update tracer to read it")
    return header


def read_trace(path: str) -> Trace:
    """Every usable record; lines that are not (see record_problem) are counted in
    `trace.damage`, never an error."""
    trace = Trace(path, header=parse_header(path, check_readable(path)))
    try:
        for record, cut, _number in iter_valid(path, trace.damage):
            if cut:
                trace.truncated = True
                break
            kind = record.get("type")
            if kind == "header":
                continue
            if kind == "span":
                trace.spans.append(record)
            elif kind == "end":
                trace.end = record
            else:
                trace.others.append(record)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    return trace
