"""`tracer plot`: the figure draws every call (or every start), and the files are written."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from export_support import read_trace_lines
from helpers import research_datasets

from tracer.front.plot_cmd import plot
from tracer.plots.data import load
from tracer.plots.figure import build_figure, drawn

ROOT = Path(__file__).resolve().parents[2]
# shared/datasets beside the repository, or beside the one this clone came from.
DATASETS = research_datasets()
PERCONA = DATASETS / "percona-mongodb-reconcile-times.csv"
WASM = DATASETS / "wasm-operator-reconcile-times-5s.txt"
SVG = "{http://www.w3.org/2000/svg}"


def expected_kinds(spans: list[dict]) -> Counter:
    """Each span's colour, decided here from the trace's own fields."""
    out = Counter()
    for s in spans:
        result = s["result"] or {}
        if s["end_ns"] is None:
            out["unfinished"] += 1
        elif s["panic"]:
            out["panic"] += 1
        elif s["error"]:
            out["error"] += 1
        elif result.get("requeue_after_ns"):
            out["requeue-after"] += 1
        elif result.get("requeue"):
            out["requeue"] += 1
        else:
            out["ok"] += 1
    return out


def drawn_spans(fig) -> Counter:
    return Counter({gid.split(":", 1)[1]: n for gid, n in drawn(fig).items()
                    if gid.startswith("spans:")})


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def svg_marks(path: Path, prefix: str) -> Counter:
    """Shapes in the SVG groups matplotlib names after each collection's gid."""
    counts = Counter()
    for group in ET.parse(path).iter(f"{SVG}g"):
        gid = group.get("id", "")
        if gid.startswith(prefix):
            uses = group.findall(f".//{SVG}use")
            counts[gid.split(":", 1)[-1]] += len(uses) or len(group.findall(f"{SVG}path"))
    return counts


def run_plot(source: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(plot, [str(source), "-o", str(out), *extra])
    assert result.exit_code == 0, (result.output, result.exception)


def test_a_trace_draws_every_call_coloured_by_result(go_trace):
    _, spans, _ = read_trace_lines(go_trace)
    fig = build_figure(load(str(go_trace)))
    assert drawn_spans(fig) == expected_kinds(spans)
    assert sum(drawn_spans(fig).values()) == len(spans)
    counts = drawn(fig)
    assert counts["durations-over-time"] == len(spans)
    timeline = fig.axes[0]
    # 60 objects: too many lanes, so one lane per goroutine.
    lanes = {t.get_text() for t in timeline.get_yticklabels()}
    assert lanes == {f"goroutine {s['goroutine']}" for s in spans}
    legend = {t.get_text().split(" (")[0] for t in timeline.get_legend().get_texts()}
    assert legend == {k.replace("-", " ") for k in expected_kinds(spans)}


def test_few_objects_get_a_lane_each_and_unfinished_calls_show(unfinished_trace):
    _, spans, _ = read_trace_lines(unfinished_trace)
    fig = build_figure(load(str(unfinished_trace)))
    assert drawn_spans(fig) == expected_kinds(spans)
    assert drawn_spans(fig)["unfinished"] == sum(s["status"] == "unfinished" for s in spans)
    lanes = {t.get_text() for t in fig.axes[0].get_yticklabels()}
    assert lanes == {f"{s['request']['namespace']}/{s['request']['name']}" for s in spans}
    by_worker = build_figure(load(str(unfinished_trace)), lanes="worker")
    assert {t.get_text() for t in by_worker.axes[0].get_yticklabels()} == {
        f"goroutine {s['goroutine']}" for s in spans}
    assert drawn_spans(by_worker) == expected_kinds(spans)


def test_png_and_svg_files(go_trace, tmp_path):
    _, spans, _ = read_trace_lines(go_trace)
    png, svg = tmp_path / "t.png", tmp_path / "t.svg"
    run_plot(go_trace, png)
    run_plot(go_trace, svg)
    width, height = png_size(png)
    assert width >= 1200 and height >= 600
    assert png.stat().st_size > 30_000
    assert svg_marks(svg, "spans:") == expected_kinds(spans)
    assert sum(svg_marks(svg, "spans:").values()) == len(spans)


def test_the_percona_timestamps_file(tmp_path):
    rows = [line for line in PERCONA.read_text().splitlines()[1:] if line]
    data = load(str(PERCONA))
    assert data.starts_only and len(data) == len(rows) == 1001
    fig = build_figure(data)
    counts = drawn(fig)
    assert counts["starts"] == 1001
    assert counts["intervals-over-time"] == 1000
    bars = [p for ax in fig.axes for p in ax.patches if p.get_gid() == "intervals"]
    assert sum(p.get_height() for p in bars) == 1000
    intervals = np.diff(data.starts) / 1e9
    # The dataset's published figures.
    assert round(float(intervals.mean()), 3) == 5.205
    assert round(float(np.median(intervals)), 3) == 5.198
    assert round(float(intervals.max()), 3) == 21.442
    out = tmp_path / "percona.png"
    run_plot(PERCONA, out)
    assert png_size(out)[0] >= 1200 and out.stat().st_size > 30_000
    svg = tmp_path / "percona.svg"
    run_plot(PERCONA, svg)
    assert svg_marks(svg, "starts")["starts"] == 1001


def test_the_lines_style_timestamps_file():
    data = load(str(WASM))
    assert len(data) == len([line for line in WASM.read_text().splitlines() if line]) == 303
    assert drawn(build_figure(data))["starts"] == 303


def test_the_readme_figure_is_there():
    image = ROOT / "docs" / "percona-plot.png"
    width, height = png_size(image)
    assert width >= 1200 and height >= 600
