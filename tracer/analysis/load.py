"""Read trace files (and research timestamps files) into polars DataFrames, fast.

A million spans is a 400 MB file: polars' NDJSON reader parses it in parallel against a fixed
schema (unknown fields are skipped, so header, end and event lines share the one pass). Every
time is moved to wall-clock ns with each file's header clock pair, so files merge on one
timeline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from tracer.analysis import timestamps
from tracer.errors import UserError
from tracer.session.tracefile import (
    MAX_NS,
    Damage,
    check_readable,
    iter_valid,
    parse_header,
    parse_line,
    valid_clock,
)

_STR = pl.String
_I64 = pl.Int64
# What the analysis needs from span and event lines; `status` is derived (cheaper than read).
SCHEMA: dict[str, pl.DataType] = {
    "type": _STR,
    "id": _I64,
    "function": _STR,
    "start_ns": _I64,
    "end_ns": _I64,
    "request": pl.Struct({"namespace": _STR, "name": _STR}),
    "result": pl.Struct({"requeue": pl.Boolean, "requeue_after_ns": _I64}),
    "error": pl.Struct({"type": _STR}),
    "panic": pl.Struct({"type": _STR}),
    "ts_ns": _I64,
    "kind": _STR,
    "namespace": _STR,
    "name": _STR,
    "event": _STR,
    "owner": pl.Struct({"kind": _STR, "name": _STR}),
    "parent": _I64,
    "depth": _I64,
}
SPAN_COLUMNS = ["source", "id", "function", "start", "end", "namespace", "name", "requeue",
                "requeue_after", "error_type", "panic_type", "status"]
OBJECT_KEY = ["function", "namespace", "name"]


def add_codes(spans: pl.DataFrame) -> pl.DataFrame:
    """Integer group codes, `fn_code` and `obj_code` (an object is function + namespace + name:
    two controllers reconciling one name are two objects), null without a request: grouping
    by one integer is many times faster than by strings."""
    key = pl.concat_str(OBJECT_KEY, separator="\x00")
    return spans.with_columns(
        pl.col("function").cast(pl.Categorical).to_physical().alias("fn_code"),
        key.cast(pl.Categorical).to_physical().alias("obj_code"))


@dataclass
class Source:
    path: str
    format: str  # "trace", or a timestamps style: "csv" / "lines"
    spans: int = 0
    events: int = 0
    truncated: bool = False
    window: tuple[int, int] = (0, 0)  # wall-clock ns observed: attach to end, or first to last
    header: dict | None = None
    end: dict | None = None


@dataclass
class Loaded:
    sources: list[Source]
    spans: pl.DataFrame  # SPAN_COLUMNS + codes; wall-clock ns; `end` null if unfinished
    events: pl.DataFrame  # ts, kind, namespace, name, event (watch events), wall-clock ns
    starts_only: bool  # timestamps files: start times and nothing else
    segments: list[tuple[int, int]] = field(default_factory=list)  # merged windows, sorted
    # Child spans (probe role "step"): source, id, parent, depth, function, start, end. Kept
    # apart from `spans`, so every reconcile statistic counts reconciles only.
    steps: pl.DataFrame | None = None


def _first_line(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.readline()


def detect(path: str) -> str:
    """"trace", "csv" or "lines"; a UserError for a missing, empty or foreign file."""
    first = check_readable(path, "file")
    if first.lstrip().startswith(b"{"):
        parse_header(path, first)
        return "trace"
    style = timestamps.sniff(first.decode("latin-1"))
    if style is None:
        raise UserError(f"{path} is neither a tracer trace file nor a timestamps file")
    return style


def _last_record(path: str, size: int) -> tuple[dict | None, bool]:
    """(the last whole line as JSON, whether the file ends mid-line), reading only its tail."""
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    cut = not tail.endswith(b"\n")
    lines = tail.splitlines()
    if cut:
        lines = lines[:-1]
    try:
        last = parse_line(lines[-1]) if lines else None
    except ValueError:
        last = None
    return (last if isinstance(last, dict) else None), cut


def _usable(data: bytes | str, path: str) -> pl.DataFrame | None:
    """The file (or its whole lines) through polars' parallel reader, if every line parses
    and every span and event has its times in range; None otherwise."""
    try:
        # The lazy reader parses in parallel; the eager one on a path did not (polars 2.1).
        raw = (pl.read_ndjson(data, schema=SCHEMA) if isinstance(data, bytes)
               else pl.scan_ndjson(data, schema=SCHEMA).collect())
    except pl.exceptions.PolarsError:
        return None
    spans = raw.filter(pl.col("type") == "span")
    events = raw.filter(pl.col("type") == "event")
    limit = MAX_NS - 1
    bad_span = (pl.col("start_ns").is_null() | ~pl.col("start_ns").is_between(0, limit)
                | (pl.col("end_ns").is_not_null()
                   & (~pl.col("end_ns").is_between(0, limit)
                      | (pl.col("end_ns") < pl.col("start_ns")))))
    bad_event = pl.col("ts_ns").is_null() | ~pl.col("ts_ns").is_between(0, limit)
    if spans.filter(bad_span).height or events.filter(bad_event).height:
        return None
    return raw


def _fits(value: object, dtype: pl.DataType) -> bool:
    if value is None:
        return True
    if dtype == _STR:
        return isinstance(value, str)
    if dtype == _I64:
        return type(value) is int and abs(value) < MAX_NS
    if dtype == pl.Boolean:
        return isinstance(value, bool)
    return isinstance(value, dict)


def _project(record: dict, schema) -> dict:
    """Only the fields the schema reads, each only if it has the schema's kind: a checked
    record then always parses (other fields may hold anything)."""
    out = {}
    for key, dtype in schema.items():
        value = record.get(key)
        if value is None or not _fits(value, dtype):
            continue
        out[key] = _project(value, dict(dtype.to_schema())) if isinstance(dtype, pl.Struct) \
            else value
    return out


def _checked(path: str, damage: Damage) -> pl.DataFrame:
    """The slow way, line by line (tracefile.iter_valid): lines that are not well-formed
    records and damaged spans or events are left out and counted in `damage`."""
    good = [json.dumps(_project(record, SCHEMA), separators=(",", ":")).encode()
            for record, cut, _ in iter_valid(path, damage) if not cut]
    if not good:
        return pl.DataFrame(schema=SCHEMA)
    try:
        return pl.read_ndjson(b"\n".join(good) + b"\n", schema=SCHEMA)
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"{path} could not be read ({str(exc).splitlines()[0][:80]})") from None


def _read_trace(path: str, index: int, warn: Callable[[str], None]
                ) -> tuple[Source, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    size = os.path.getsize(path)
    header = parse_header(path, _first_line(path))
    last, cut = _last_record(path, size)
    if cut:
        with open(path, "rb") as f:
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]
        source_arg: str | bytes = data
        whole = data.count(b"\n")
        warn(f"{path} is cut mid-line (the run did not end cleanly): "
             f"reporting its {whole} whole lines")
    else:
        source_arg = path
    raw = _usable(source_arg, path)
    if raw is None:
        damage = Damage()
        raw = _checked(path, damage)
        if damage:
            warn(damage.message(path))
    clock = header.get("clock") or {}
    offset = int(clock.get("realtime_ns", 0)) - int(clock.get("monotonic_ns", 0))
    end = last if last is not None and last.get("type") == "end" else None

    span_lines = raw.filter(pl.col("type") == "span")
    steps = span_lines.filter(pl.col("parent").is_not_null()).select(
        pl.lit(index, pl.UInt32).alias("source"), "id", "parent", "depth", "function",
        (pl.col("start_ns") + offset).alias("start"), (pl.col("end_ns") + offset).alias("end"))
    spans = span_lines.filter(pl.col("parent").is_null()).select(
        pl.lit(index, pl.UInt32).alias("source"),
        pl.col("id"),
        pl.col("function"),
        (pl.col("start_ns") + offset).alias("start"),
        (pl.col("end_ns") + offset).alias("end"),
        pl.col("request").struct.field("namespace").alias("namespace"),
        pl.col("request").struct.field("name").alias("name"),
        pl.col("result").struct.field("requeue").alias("requeue"),
        pl.col("result").struct.field("requeue_after_ns").alias("requeue_after"),
        pl.col("error").struct.field("type").alias("error_type"),
        pl.col("panic").struct.field("type").alias("panic_type"),
    ).with_columns(
        pl.when(pl.col("end").is_null()).then(pl.lit("unfinished"))
        .when(pl.col("panic_type").is_not_null()).then(pl.lit("panic"))
        .when(pl.col("error_type").is_not_null()).then(pl.lit("error"))
        .otherwise(pl.lit("ok")).alias("status")
    )
    events = raw.filter(pl.col("type") == "event").select(
        pl.lit(index, pl.UInt32).alias("source"),
        (pl.col("ts_ns") + offset).alias("ts"),
        "kind", "namespace", "name", "event",
        pl.col("owner").struct.field("kind").alias("owner_kind"),
        pl.col("owner").struct.field("name").alias("owner_name"),
    )
    # The window the tracer watched: from the attach to the end line (or the last thing seen).
    lo = int(clock["monotonic_ns"]) + offset if "monotonic_ns" in clock else None
    seen = [spans["start"].min(), spans["start"].max(), spans["end"].max(),
            events["ts"].min(), events["ts"].max()]
    seen = [int(v) for v in seen if v is not None]
    hi = None
    if end is not None and valid_clock(end.get("clock")):
        hi = int(end["clock"]["monotonic_ns"]) + offset
    lo = min([v for v in [lo, *seen] if v is not None], default=0)
    hi = max([v for v in [hi, *seen] if v is not None], default=lo)
    source = Source(path, "trace", spans.height, events.height, cut, (lo, hi), header, end)
    return source, spans, events, steps


def _read_timestamps(path: str, index: int, warn: Callable[[str], None]) -> tuple[Source,
                                                                                   pl.DataFrame]:
    ts = timestamps.read_timestamps(path)
    if ts.truncated:
        warn(f"{path} is cut mid-line: reporting its {len(ts.starts_ns)} whole rows")
    starts = pl.Series("start", ts.starts_ns, dtype=_I64)
    spans = pl.DataFrame({"source": pl.Series([index] * len(starts), dtype=pl.UInt32),
                          "start": starts})
    spans = spans.with_columns(
        pl.lit(None, _I64).alias("id"), pl.lit(None, _STR).alias("function"),
        pl.lit(None, _I64).alias("end"), pl.lit(None, _STR).alias("namespace"),
        pl.lit(None, _STR).alias("name"), pl.lit(None, pl.Boolean).alias("requeue"),
        pl.lit(None, _I64).alias("requeue_after"), pl.lit(None, _STR).alias("error_type"),
        pl.lit(None, _STR).alias("panic_type"), pl.lit(None, _STR).alias("status"),
    ).select(SPAN_COLUMNS)
    source = Source(path, ts.style, spans.height, 0, ts.truncated,
                    (int(starts.min()), int(starts.max())))
    return source, spans


def merge_windows(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping windows (traces of one time) become one; gaps between runs are unobserved."""
    merged: list[list[int]] = []
    for lo, hi in sorted(windows):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def load(paths: list[str], warn: Callable[[str], None] = lambda message: None) -> Loaded:
    """Read every file; traces and timestamps files cannot be mixed (they measure apart)."""
    kinds = [detect(path) for path in paths]
    if len({kind == "trace" for kind in kinds}) > 1:
        raise UserError("give either trace files or timestamps files, not both")
    sources: list[Source] = []
    span_frames: list[pl.DataFrame] = []
    event_frames: list[pl.DataFrame] = []
    step_frames: list[pl.DataFrame] = []
    for index, (path, kind) in enumerate(zip(paths, kinds, strict=True)):
        if kind == "trace":
            source, spans, events, steps = _read_trace(path, index, warn)
            event_frames.append(events)
            step_frames.append(steps)
        else:
            source, spans = _read_timestamps(path, index, warn)
        sources.append(source)
        span_frames.append(spans)
    spans = pl.concat(span_frames, how="vertical_relaxed")
    if event_frames:
        events = pl.concat(event_frames, how="vertical_relaxed")
    else:
        events = pl.DataFrame(schema={"source": pl.UInt32, "ts": _I64, "kind": _STR,
                                      "namespace": _STR, "name": _STR, "event": _STR,
                                      "owner_kind": _STR, "owner_name": _STR})
    if spans.height == 0:
        raise UserError("no calls to report: " + ", ".join(
            f"{s.path} has no span" for s in sources))
    return Loaded(sources, add_codes(spans), events, starts_only=kinds[0] != "trace",
                  segments=merge_windows([s.window for s in sources]),
                  steps=pl.concat(step_frames, how="vertical_relaxed") if step_frames else None)
