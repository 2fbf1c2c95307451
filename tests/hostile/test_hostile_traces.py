"""Damaged trace files: every reader skips and counts what is not a well-formed record (one
warning line: how many, the first line number), leaves out spans whose times are damaged,
and never turns them into a figure, an internal error or invalid JSON."""

from __future__ import annotations

import csv
import json
import re

import pytest
from helpers import run_tracer
from hostile_support import end, header, hostile_trace, span, write_lines

GOOD = 30


def _trace(tmp_path, raw: list[str], spans: list[dict] | None = None):
    records = [header()] + [span(i, i * 10_000_000, 1_000_000 + i) for i in range(GOOD)]
    return write_lines(tmp_path / "damaged.jsonl", records + (spans or []),
                       raw + [json.dumps(end(GOOD * 10_000_000 + 1))])


DEEP = '{"type":"span","x":' + "[" * 100_000 + "]" * 100_000 + "}"
CASES = {
    # Lines that are not well-formed records: skipped and counted.
    "wrong-types": (['{"type":"span","id":"x","function":7,"start_ns":"soon","end_ns":[1]}',
                     '{"type":"span","id":1,"function":"f","start_ns":1,"request":"ns/obj"}'],
                    "bad", 2),
    "not-an-object": (['[1,2,3]', '"span"', "null"], "bad", 3),
    "not-json": (["{nope", "\x00\x01\x02"], "bad", 2),
    "deep-nesting": ([DEEP], "bad", 1),
    # Spans whose times are damaged: left out of every figure and counted.
    "time-2^70": ([json.dumps(span(99, 0, None, start_ns=2**70))], "damaged", 1),
    "infinity": (['{"type":"span","id":98,"function":"f","start_ns":Infinity,"end_ns":NaN}'],
                 "damaged", 1),
    "end-before-start": ([json.dumps(span(97, 50_000_000, -17_000)),
                          json.dumps(span(96, 60_000_000, -904_000))], "damaged", 2),
    "negative-time": ([json.dumps(span(95, 0, 5, start_ns=-5))], "damaged", 1),
}


def _warning(stderr: str, kind: str, count: int) -> None:
    lines = [line for line in stderr.splitlines() if "skipped" in line or "damaged" in line]
    assert len(lines) == 1, stderr
    what = "skipped" if kind == "bad" else "damaged"
    assert re.search(rf"\b{count} \w+( or events)? {what}|{count} lines? {what}", lines[0]) \
        or f"{count} line" in lines[0] or f"{count} span" in lines[0], lines[0]
    assert re.search(rf"first: line {GOOD + 2}\b", lines[0]), lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_readers_skip_and_count(case, tmp_path):
    raw, kind, count = CASES[case]
    trace = _trace(tmp_path, raw)

    chrome = tmp_path / "out.chrome.json"
    result = run_tracer("export", str(trace), "-f", "chrome", "-o", str(chrome))
    assert result.returncode == 0 and "internal error" not in result.stderr, result.stderr
    _warning(result.stderr, kind, count)

    def no_constant(name):
        raise AssertionError(f"{name} in the chrome JSON")

    events = json.loads(chrome.read_text(), parse_constant=no_constant)["traceEvents"]
    durations = [e["dur"] for e in events if e.get("ph") == "X"]
    assert durations and min(durations) >= 0
    assert len([e for e in events if e.get("ph") == "X" and e["pid"] == 2]) == GOOD

    for fmt, out in (("csv", "out.csv"), ("timestamps", "out.txt")):
        result = run_tracer("export", str(trace), "-f", fmt, "-o", str(tmp_path / out))
        assert result.returncode == 0, result.stderr
        _warning(result.stderr, kind, count)

    result = run_tracer("report", str(trace), "--json")
    assert result.returncode == 0 and "internal error" not in result.stderr, result.stderr
    _warning(result.stderr, kind, count)
    report = json.loads(result.stdout)
    assert report["total"]["calls"] == GOOD
    assert report["total"]["duration_s"]["p50"] > 0  # no negative figure

    result = run_tracer("view", str(trace), "--summary")
    assert result.returncode == 0 and "internal error" not in result.stderr, result.stderr
    assert "damaged" in result.stdout or "skipped" in result.stdout
    # No negative figure (the damaged span's -17 µs): the file's own path may hold "-17".
    assert "-17" not in result.stdout.replace(str(trace), "")

    result = run_tracer("plot", str(trace), "-o", str(tmp_path / "out.png"))
    assert result.returncode == 0 and "internal error" not in result.stderr, result.stderr
    _warning(result.stderr, kind, count)


def test_a_damaged_header_clock_is_one_line(tmp_path):
    trace = write_lines(tmp_path / "t.jsonl", [header(clock={"monotonic_ns": "x"}),
                                               span(1, 0)])
    for args in (("view", str(trace), "--summary"), ("report", str(trace)),
                 ("export", str(trace), "-f", "chrome", "-o", str(tmp_path / "o.json"))):
        result = run_tracer(*args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and "header is damaged" in result.stderr


def test_csv_quotes_bare_carriage_returns(tmp_path):
    """A bare CR in a message used to be written unquoted: csv read 470 rows for 403."""
    records = [header()] + [span(i, i * 1_000_000, 1000, name=f"a\rb{i}",
                                 error=f"x\ry\r\nz{i}") for i in range(403)]
    trace = write_lines(tmp_path / "t.jsonl", records + [end(500_000_000)])
    out = tmp_path / "t.csv"
    result = run_tracer("export", str(trace), "-f", "csv", "-o", str(out))
    assert result.returncode == 0, result.stderr
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 403
    assert rows[5]["request.name"] == "a\rb5" and rows[5]["error.message"] == "x\ry\r\nz5"


def test_hostile_trace_round_trips_through_csv(tmp_path):
    trace = hostile_trace(tmp_path / "h.jsonl")
    out = tmp_path / "h.csv"
    assert run_tracer("export", str(trace), "-f", "csv", "-o", str(out)).returncode == 0
    with open(out, newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 40
