"""The research timestamp formats: writer, reader, and both against the research's own files."""

from __future__ import annotations

import random

import pytest
from report_support import (
    CLOCK,
    PERCONA,
    WASM_CHANGES,
    WASM_RECONCILES,
    dataset,
    end,
    header,
    span,
)

from tracer.analysis.timestamps import read_timestamps, sniff, write_timestamps
from tracer.errors import UserError

OFFSET = CLOCK["realtime_ns"] - CLOCK["monotonic_ns"]


def monotonic_starts(n: int = 500, seed: int = 3) -> list[int]:
    rng = random.Random(seed)
    return [CLOCK["monotonic_ns"] + rng.randrange(10**13) for _ in range(n)]


def test_lines_round_trip_is_exact_to_the_nanosecond(tmp_path):
    starts = monotonic_starts()
    path = tmp_path / "starts.txt"
    assert write_timestamps(starts, path, "lines", CLOCK) == len(starts)
    back = read_timestamps(path)
    assert back.style == "lines"
    assert back.starts_ns == sorted(s + OFFSET for s in starts)


def test_csv_round_trip_keeps_milliseconds(tmp_path):
    starts = monotonic_starts()
    path = tmp_path / "starts.csv"
    write_timestamps(starts, path, "csv", CLOCK)
    text = path.read_text()
    assert text.startswith("reconsile_dates\n") and text.splitlines()[1].endswith("Z")
    back = read_timestamps(path)
    assert back.style == "csv"
    # Milliseconds, cut (not rounded) like JavaScript's toISOString().
    assert back.starts_ns == sorted((s + OFFSET) // 1_000_000 * 1_000_000 for s in starts)


@pytest.mark.parametrize("name, style", [
    (PERCONA, "csv"), (WASM_RECONCILES, "lines"), (WASM_CHANGES, "lines")])
def test_writer_reproduces_the_research_files(tmp_path, name, style):
    """Byte for byte, but for one wasm row whose printer dropped trailing zeros
    (`12:17:02.656465`): the writer always gives nine digits, the reader takes both."""
    original = dataset(name)
    starts = read_timestamps(original).starts_ns
    copy = tmp_path / name
    write_timestamps(starts, copy, style, clock=None)  # wall-clock already
    expected = original.read_text().splitlines()
    if style == "lines":
        expected = [f"{whole}.{frac.ljust(9, '0')}" for whole, frac in
                    (line.split(".") for line in expected)]
    assert copy.read_text() == "".join(line + "\n" for line in expected)


def test_writer_takes_a_traces_records_as_they_are(tmp_path):
    """Header, end and event lines carry no start and are skipped; unfinished calls started,
    so they are written."""
    records = [header(), span(1, CLOCK["monotonic_ns"] + 5_000, None),
               span(2, CLOCK["monotonic_ns"] + 1_000, CLOCK["monotonic_ns"] + 2_000),
               {"type": "event", "ts_ns": CLOCK["monotonic_ns"], "kind": "X", "namespace": "n",
                "name": "a", "event": "ADDED", "resource_version": "1", "generation": 1},
               end(CLOCK["monotonic_ns"] + 9_000)]
    path = tmp_path / "t.txt"
    assert write_timestamps(records, path, "lines", records[0]["clock"]) == 2
    assert read_timestamps(path).starts_ns == [CLOCK["realtime_ns"] + 1_000,
                                               CLOCK["realtime_ns"] + 5_000]
    assert path.read_text().splitlines()[0] == "2023-11-14 22:13:20.000001000"


def test_writer_refuses_an_unknown_style(tmp_path):
    with pytest.raises(UserError, match="csv or lines"):
        write_timestamps([1], tmp_path / "x", "parquet", None)


def test_sniff_tells_the_styles_apart():
    assert sniff("reconsile_dates\n") == "csv"
    assert sniff("2023-01-17T13:45:57.861Z") == "csv"
    assert sniff("2023-05-12 11:52:20.338366696\n") == "lines"
    assert sniff('{"type":"header"}') is None
    assert sniff("hello") is None


def test_reader_keeps_the_whole_rows_of_a_cut_file(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_text("2023-05-12 11:52:20.338366696\n2023-05-12 11:52:23.396371559\n2023-05-1")
    back = read_timestamps(path)
    assert back.truncated and len(back.starts_ns) == 2


def test_reader_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("reconsile_dates\n2023-01-17T13:45:57.861Z\nnot a time\n"
                    "2023-01-17T13:46:00.918Z\n")
    with pytest.raises(UserError, match="line 3 is not a timestamp"):
        read_timestamps(path)


@pytest.mark.parametrize("content, message", [
    ("", "is empty"), ("\n\n", "is empty"), ("reconsile_dates\n", "holds no timestamps"),
    ("name,value\n1,2\n", "is not a timestamps file")])
def test_reader_refuses_empty_and_foreign_files(tmp_path, content, message):
    path = tmp_path / "f.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_timestamps(path)
