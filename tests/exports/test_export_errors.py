"""Bad input to `tracer export` and `tracer plot`: one line, exit 2, and no output file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from export_support import assert_one_line_error, files_in, run_cli

FORMATS = ["chrome", "csv", "timestamps"]


def export_args(trace: Path, fmt: str, out: Path) -> list[str]:
    return ["export", str(trace), "--format", fmt, "-o", str(out)]


def plot_args(trace: Path, out: Path) -> list[str]:
    return ["plot", str(trace), "-o", str(out)]


def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not traces, with a word the error must say."""
    empty = folder / "empty.jsonl"
    empty.write_text("")
    foreign = folder / "foreign.jsonl"
    foreign.write_text('{"level":"info","msg":"reconciled"}\n{"level":"info"}\n')
    binary = folder / "binary.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return {
        "missing": (folder / "missing.jsonl", "no such"),
        "empty": (empty, "empty"),
        "foreign": (foreign, "not a tracer trace file"),
        "binary": (binary, "binary.jsonl"),
        "folder": (folder, "folder"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "foreign", "binary", "folder"])
def test_bad_input_files(case, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    source, word = bad_inputs(inputs)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for fmt in FORMATS:
        result = run_cli(*export_args(source, fmt, out_dir / f"x.{fmt}"))
        assert_one_line_error(result, word)
    result = run_cli("export", str(source), "--format", "otlp", "--endpoint",
                     "http://127.0.0.1:9/v1/traces")
    assert_one_line_error(result, word)
    for suffix in ("png", "svg"):
        assert_one_line_error(run_cli(*plot_args(source, out_dir / f"x.{suffix}")),
                              word if case != "foreign" else "not a tracer trace file")
    assert files_in(out_dir) == set()


def test_a_trace_broken_midway_is_exported_with_the_line_counted(go_trace, tmp_path):
    """A bad line midway is skipped and counted in one warning line with its number; every
    other span is exported (issue 18: a damaged trace never ends in an internal error)."""
    lines = go_trace.read_text().splitlines(keepends=True)
    spans = sum(1 for line in lines if '"type":"span"' in line)
    broken = tmp_path / "in" / "broken.jsonl"
    broken.parent.mkdir()
    broken.write_text("".join(lines[:100]) + "{not json\n" + "".join(lines[100:]))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for fmt in FORMATS:
        result = run_cli(*export_args(broken, fmt, out_dir / f"x.{fmt}"))
        assert result.code == 0, result.stderr
        assert "1 line skipped, not trace records (first: line 101)" in result.stderr
        assert f"wrote {spans} " in result.stderr or fmt == "timestamps"
    result = run_cli(*plot_args(broken, out_dir / "x.png"))
    assert result.code == 0 and "(first: line 101)" in result.stderr, result.stderr
    assert not [p for p in files_in(out_dir) if p.endswith(".part")], "no temporary file"


def test_an_existing_output_survives_a_failed_export(go_trace, tmp_path):
    out = tmp_path / "previous.csv"
    out.write_text("id,function\nearlier export\n")
    broken = tmp_path / "broken.jsonl"
    header = json.loads(go_trace.read_text().splitlines()[0])
    header["clock"] = {"monotonic_ns": "soon", "realtime_ns": None}
    broken.write_text(json.dumps(header) + "\n[1, 2]\n")
    assert_one_line_error(run_cli(*export_args(broken, "csv", out)), "header is damaged")
    assert out.read_text() == "id,function\nearlier export\n"
    assert files_in(tmp_path) == {"previous.csv", "broken.jsonl"}


@pytest.mark.parametrize("where, word", [
    ("no-such-folder/out", "does not exist"),
    ("a-folder", "is a folder"),
    ("/proc/out", "cannot write"),
])
def test_unwritable_outputs(go_trace, tmp_path, where, word):
    (tmp_path / "a-folder").mkdir()
    target = tmp_path / where if not where.startswith("/") else Path(where)
    before = files_in(tmp_path)
    for fmt in FORMATS:
        out = target if where == "a-folder" else target.with_suffix(f".{fmt}")
        assert_one_line_error(run_cli(*export_args(go_trace, fmt, out)), word)
    for suffix in ("png", "svg"):
        out = target if where == "a-folder" else target.with_suffix(f".{suffix}")
        if where == "a-folder":
            out = tmp_path / "a-folder.png"
            out.mkdir()
        assert_one_line_error(run_cli(*plot_args(go_trace, out)), word)
        if where == "a-folder":
            out.rmdir()
    assert files_in(tmp_path) == before
    assert files_in(tmp_path / "a-folder") == set()


def test_unknown_format_and_misused_options(go_trace, tmp_path):
    assert_one_line_error(run_cli(*export_args(go_trace, "parquet", tmp_path / "x")),
                          "parquet")
    assert_one_line_error(run_cli("export", str(go_trace)), "--format")
    assert_one_line_error(run_cli("export", str(go_trace), "--format", "csv", "--endpoint",
                                  "http://127.0.0.1:4318/v1/traces"), "--endpoint")
    assert_one_line_error(run_cli("export", str(go_trace), "--format", "otlp", "-o",
                                  str(tmp_path / "x")), "--output")
    assert_one_line_error(run_cli("export", str(go_trace), "--format", "chrome", "--style",
                                  "lines"), "--style")
    assert_one_line_error(run_cli(*export_args(go_trace, "csv", go_trace)), "the trace itself")
    assert_one_line_error(run_cli(*plot_args(go_trace, tmp_path / "x.jpg")), ".png or .svg")
    assert_one_line_error(run_cli("plot", str(go_trace), "-o", str(tmp_path / "x.png"),
                                  "--lanes", "cars"), "cars")
    assert files_in(tmp_path) == set()


def test_object_lanes_of_a_native_trace(native_trace, tmp_path):
    result = run_cli("plot", str(native_trace), "-o", str(tmp_path / "x.png"), "--lanes",
                     "object")
    assert_one_line_error(result, "--lanes worker")
    assert files_in(tmp_path) == set()
    assert run_cli("plot", str(native_trace), "-o", str(tmp_path / "x.png")).code == 0
    assert files_in(tmp_path) == {"x.png"}


def test_default_output_names_sit_next_to_the_trace(go_trace, tmp_path):
    trace = tmp_path / "run.jsonl"
    trace.write_bytes(go_trace.read_bytes())
    for fmt in FORMATS:
        result = run_cli("export", str(trace), "--format", fmt)
        assert result.code == 0, result.stderr
    assert files_in(tmp_path) == {"run.jsonl", "run.chrome.json", "run.csv",
                                  "run.timestamps.csv"}
    assert (tmp_path / "run.timestamps.csv").read_text().startswith("reconsile_dates\n")


def test_a_cut_trace_is_exported_and_plotted_up_to_its_last_whole_line(go_trace, tmp_path):
    data = go_trace.read_bytes()
    cut = tmp_path / "cut.jsonl"
    middle = data.index(b"\n", len(data) // 2) - 10  # inside a span line
    cut.write_bytes(data[:middle])
    whole_spans = data[: data.rindex(b"\n", 0, middle)].count(b'"type":"span"')
    result = run_cli(*export_args(cut, "csv", tmp_path / "cut.csv"))
    assert result.code == 0, result.stderr
    assert "cut mid-line" in result.stderr
    assert len((tmp_path / "cut.csv").read_text().splitlines()) == 1 + whole_spans
    result = run_cli(*plot_args(cut, tmp_path / "cut.png"))
    assert result.code == 0 and "cut mid-line" in result.stderr
    assert f"({whole_spans} calls)" in result.stderr
