"""`tracer export --format csv`: one row per span, every field, wall-clock times."""

from __future__ import annotations

import csv
import datetime as dt

import polars as pl
from click.testing import CliRunner
from export_support import read_trace_lines, wall_offset

from tracer.front.export_cmd import export


def to_csv(trace, tmp_path) -> list[dict]:
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(export, [str(trace), "--format", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def leaves(value, prefix: str = "") -> dict:
    """Every scalar of a span, by dotted path, as CSV writes it (written independently)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(leaves(item, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(leaves(item, f"{prefix}.{i}"))
        return out
    if value is None:
        return {prefix: ""}
    if isinstance(value, bool):
        return {prefix: str(value).lower()}
    return {prefix: str(value)}


def parse_utc(text: str) -> int:
    """ns since the epoch from `2026-01-02T03:04:05.123456789Z`."""
    assert text.endswith("Z")
    whole, frac = text[:-1].split(".")
    seconds = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int(frac.ljust(9, "0"))


def _absent(span: dict, key: str) -> bool:
    value = span
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return True
        value = value[part]
    return False


def check_rows(trace, rows: list[dict]) -> None:
    header, spans, _ = read_trace_lines(trace)
    offset = wall_offset(header)
    assert len(rows) == len(spans)
    for row, span in zip(rows, spans, strict=True):
        fields = leaves({k: v for k, v in span.items() if k != "type"})
        for key, expected in fields.items():
            if expected == "" and key not in row:
                continue  # a null object (error: null) is its fields' empty columns
            assert row[key] == expected, (key, row[key], expected)
        for key, cell in row.items():
            if key in fields or key in ("start_utc", "end_utc"):
                continue
            # The columns of a field this span does not have (error.type of a null error,
            # error.fields.Msg of an error without fields) are empty.
            assert cell == "" and _absent(span, key), (key, cell)
        assert parse_utc(row["start_utc"]) == span["start_ns"] + offset
        if span["end_ns"] is None:
            assert row["end_utc"] == ""
        else:
            assert parse_utc(row["end_utc"]) == span["end_ns"] + offset


def test_every_span_and_field_of_a_go_trace(go_trace, tmp_path):
    rows = to_csv(go_trace, tmp_path)
    check_rows(go_trace, rows)
    columns = list(rows[0])
    for column in ("id", "function", "status", "start_ns", "end_ns", "duration_ns", "start_utc",
                   "end_utc", "goroutine", "thread", "request.namespace", "request.name",
                   "result.requeue", "result.requeue_after_ns", "error.type", "error.message",
                   "panic.type", "panic.message"):
        assert column in columns, column
    assert len(columns) == len(set(columns))
    assert {r["status"] for r in rows} >= {"ok", "error", "panic"}


def test_unfinished_and_native_traces(unfinished_trace, native_trace, tmp_path):
    check_rows(unfinished_trace, to_csv(unfinished_trace, tmp_path))
    rows = to_csv(native_trace, tmp_path)
    check_rows(native_trace, rows)
    assert {"args.0", "args.1", "return", "thread"} <= set(rows[0])
    assert not any(c.startswith(("request.", "result.")) for c in rows[0])


def test_the_wall_clock_agrees_with_the_header_clock_pair(go_trace, tmp_path):
    header, spans, _ = read_trace_lines(go_trace)
    rows = to_csv(go_trace, tmp_path)
    attach_wall = header["clock"]["realtime_ns"]
    for row, span in zip(rows, spans, strict=True):
        since_attach = span["start_ns"] - header["clock"]["monotonic_ns"]
        assert parse_utc(row["start_utc"]) - attach_wall == since_attach


def test_polars_reads_it_back(go_trace, tmp_path):
    _, spans, _ = read_trace_lines(go_trace)
    to_csv(go_trace, tmp_path)
    frame = pl.read_csv(tmp_path / "out.csv")
    assert frame.height == len(spans)
    assert frame["start_ns"].to_list() == [s["start_ns"] for s in spans]
    assert frame["result.requeue"].dtype == pl.Boolean
