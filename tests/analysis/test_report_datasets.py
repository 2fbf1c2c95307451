"""The published figures of earlier research, reproduced from its own timestamp files."""

from __future__ import annotations

import datetime as dt
import json
import statistics

import pytest
from report_support import (
    PERCONA,
    WASM_CHANGES,
    WASM_RECONCILES,
    dataset,
    report_json,
    run_tracer_report,
)

from tracer.analysis.load import load
from tracer.analysis.report import build
from tracer.analysis.timestamps import read_timestamps


def independent_ns(line: str) -> int:
    """The row's time through datetime, a parser the reader does not use (µs, then ns)."""
    text = line.strip().rstrip("Z").replace("T", " ")
    whole, _, frac = text.partition(".")
    when = dt.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + int(frac.ljust(9, "0"))


@pytest.mark.parametrize("name, style, rows", [
    (PERCONA, "csv", 1001), (WASM_RECONCILES, "lines", 303), (WASM_CHANGES, "lines", 303)])
def test_reads_every_row_of_the_dataset_files(name, style, rows):
    path = dataset(name)
    lines = path.read_text().splitlines()
    if style == "csv":
        assert lines[0] == "reconsile_dates"
        lines = lines[1:]
    stamps = read_timestamps(path)
    assert stamps.style == style and not stamps.truncated
    assert len(stamps.starts_ns) == len(lines) == rows
    assert stamps.starts_ns == [independent_ns(line) for line in lines]


def percona_intervals() -> list[float]:
    starts = read_timestamps(dataset(PERCONA)).starts_ns
    return [(b - a) / 1e9 for a, b in zip(starts, starts[1:], strict=False)]


def test_percona_figures_as_published():
    """1,000 intervals, mean 5.205 s, sd 0.611 s, min 0.206 s, median 5.198 s, max 21.442 s,
    981 between 4.9 s and 5.5 s."""
    loaded = load([str(dataset(PERCONA))])
    report, _ = build(loaded, bins=[4.9, 5.5])
    iv = report["total"]["interval_s"]
    assert iv["count"] == 1000
    assert round(iv["mean"], 3) == 5.205
    assert round(iv["sd"], 3) == 0.611
    assert round(iv["min"], 3) == 0.206
    assert round(iv["median"], 3) == 5.198
    assert round(iv["max"], 3) == 21.442
    assert iv["histogram"]["counts"] == [981]
    assert iv["histogram"]["below"] + iv["histogram"]["above"] == 19
    # Start times only: what the files cannot tell stays unknown rather than made up.
    assert report["total"]["duration_s"] is None and report["total"]["idle"] is None
    assert report["causes"] is None


def test_percona_figures_agree_with_an_independent_computation():
    intervals = percona_intervals()
    report, _ = build(load([str(dataset(PERCONA))]))
    iv = report["total"]["interval_s"]
    assert iv["mean"] == pytest.approx(statistics.fmean(intervals), abs=1e-9)
    assert iv["sd"] == pytest.approx(statistics.stdev(intervals), abs=1e-9)
    assert iv["median"] == pytest.approx(statistics.median(intervals), abs=1e-9)
    assert sum(4.9 <= x <= 5.5 for x in intervals) == 981


def test_both_sd_conventions_round_to_the_published_figure():
    """The report gives the sample sd (n-1); the population sd (n) rounds to 0.611 s too, so
    the published figure does not tell which the research used."""
    intervals = percona_intervals()
    assert round(statistics.stdev(intervals), 3) == 0.611  # 0.61124 (sample)
    assert round(statistics.pstdev(intervals), 3) == 0.611  # 0.61093 (population)


def test_percona_through_the_command_line():
    report = report_json(str(dataset(PERCONA)), "--bins", "4.9,5.5")
    iv = report["total"]["interval_s"]
    assert (iv["count"], round(iv["mean"], 3), round(iv["sd"], 3), round(iv["min"], 3),
            round(iv["median"], 3), round(iv["max"], 3)) == (1000, 5.205, 0.611, 0.206,
                                                              5.198, 21.442)
    assert iv["histogram"]["counts"] == [981]
    assert report["input"] == "timestamps"
    assert report["sources"][0]["format"] == "csv"


def test_wasm_change_to_reconcile_mean_is_58_5_ms():
    result = report_json(str(dataset(WASM_RECONCILES)), "--changes",
                         str(dataset(WASM_CHANGES)))
    changes = result["changes"]
    assert changes["pairs"] == 303
    assert round(changes["latency_s"]["mean"] * 1000, 1) == 58.5
    # Row by row, from the files themselves.
    reconciles = read_timestamps(dataset(WASM_RECONCILES)).starts_ns
    changed = read_timestamps(dataset(WASM_CHANGES)).starts_ns
    delays = [(r - c) / 1e9 for r, c in zip(reconciles, changed, strict=True)]
    assert changes["latency_s"]["median"] == pytest.approx(statistics.median(delays))
    assert changes["latency_s"]["max"] == pytest.approx(max(delays))
    assert changes["negative"] == sum(d < 0 for d in delays)


def test_the_real_command_reproduces_the_figures():
    result = run_tracer_report(str(dataset(PERCONA)), "--json", "--bins", "4.9,5.5")
    assert result.returncode == 0, result.stderr
    iv = json.loads(result.stdout)["total"]["interval_s"]
    assert round(iv["mean"], 3) == 5.205 and iv["histogram"]["counts"] == [981]
    pair = run_tracer_report(str(dataset(WASM_RECONCILES)), "--changes",
                             str(dataset(WASM_CHANGES)))
    assert pair.returncode == 0, pair.stderr
    assert "mean 58.5 ms" in pair.stdout
