"""`tracer report` as a user meets it: the text report, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
from report_support import (
    FUNCTION,
    MS,
    PERCONA,
    WASM_CHANGES,
    WASM_RECONCILES,
    S,
    dataset,
    event,
    header,
    invoke,
    report_json,
    run_tracer_report,
    span,
    write_jsonl,
    write_trace,
)

from tracer.errors import UserError

T0 = 1_001 * S


def small_trace(tmp_path, name: str = "t.jsonl"):
    records = [event(T0), span(1, T0 + MS, T0 + 2 * MS, after=10 * MS),
               span(2, T0 + 12_500_000, T0 + 13 * MS, error="*errors.errorString"),
               span(3, T0 + 18_200_000, T0 + 19 * MS, requeue=True, name="b"),
               span(4, T0 + 20 * MS, None)]
    return write_trace(tmp_path / name, records)


def user_error(*args: str) -> str:
    result = invoke(*args)
    assert isinstance(result.exception, UserError), (result.output, result.exception)
    message = str(result.exception)
    assert "\n" not in message
    return message


def test_text_report_has_every_section(tmp_path):
    result = invoke(str(small_trace(tmp_path)))
    assert result.exit_code == 0, result.exception
    out = result.stdout
    for part in ("Calls", "Intervals between consecutive starts", "Interval histogram",
                 "Why each reconcile happened", "requeue-after", "unexplained",
                 "change-to-reconcile latency", "errors by type: *errors.errorString 1",
                 "Objects (top 2 of 2 by calls)", "ns/a", "MemcachedReconciler",
                 "Durations, concurrency and idle time"):
        assert part in out, part


def test_json_keys_are_stable(tmp_path):
    report = report_json(str(small_trace(tmp_path)))
    assert list(report) == ["report_version", "input", "sources", "window", "total",
                            "functions", "objects", "causes", "changes", "steps",
                            "tracer_cost"]
    group_keys = ["calls", "finished", "unfinished", "rate_per_s", "duration_s", "interval_s",
                  "idle", "peak_concurrency", "errors", "panics", "requeues", "causes"]
    assert list(report["total"]) == group_keys
    assert list(report["functions"][0]) == ["function", *group_keys]
    assert list(report["objects"][0]) == ["function", "namespace", "name", *group_keys]
    assert report["functions"][0]["function"] == FUNCTION
    assert list(report["causes"]) == ["total", "counts", "shares", "change_latency_s",
                                      "settings"]


def test_a_cut_trace_is_reported_up_to_its_last_whole_line(tmp_path):
    whole = small_trace(tmp_path)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[: data.index(b'"id":3') + 30])  # inside span 3's line
    result = invoke(str(cut), "--json")
    assert result.exit_code == 0, result.exception
    warning = result.stderr.strip()
    assert warning.startswith("tracer: warning: ") and "cut mid-line" in warning
    assert len(warning.splitlines()) == 1
    report = json.loads(result.stdout)
    assert report["total"]["calls"] == 2 and report["sources"][0]["truncated"] is True


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b'{"type":"header","sch', "cut inside its header line"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", "neither a tracer trace file nor a timestamps"),
    (b"name,age\nbob,3\n", "neither a tracer trace file nor a timestamps file"),
    (b'{"type":"span","id":1}\n', "not a tracer trace file (no header line)"),
    (b"[1, 2]\n", "neither a tracer trace file nor a timestamps file"),
])
def test_foreign_and_empty_files(tmp_path, content, message):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    assert message in user_error(str(path))


def test_a_trace_with_a_line_that_is_not_json(tmp_path):
    trace = small_trace(tmp_path)
    lines = trace.read_text().splitlines(keepends=True)
    lines.insert(3, "garbage\n")
    trace.write_text("".join(lines))
    # Skipped and counted in one warning line; the other calls are reported.
    result = invoke(str(trace), "--json")
    assert result.exit_code == 0, result.exception
    assert "1 line skipped, not trace records (first: line 4)" in result.stderr
    assert json.loads(result.stdout)["total"]["calls"] == 4


def test_missing_file_and_folder(tmp_path):
    assert user_error(str(tmp_path / "nope.jsonl")) == f"no such file: {tmp_path}/nope.jsonl"
    assert "is a folder" in user_error(str(tmp_path))


def test_a_trace_with_no_call(tmp_path):
    trace = write_jsonl(tmp_path / "t.jsonl", [header()])
    assert "has no span" in user_error(str(trace))


@pytest.mark.parametrize("args, message", [
    (["--bins", "x,y"], "--bins x,y"),
    (["--bins", "5.5,4.9"], "ascending"),
    (["--bins", "0"], "1 to 1000 bins"),
    (["--top", "-1"], "--top -1"),
    (["--tolerance", "-1"], "--tolerance"),
    (["--backoff-base", "0"], "--backoff-base"),
    (["--backoff-base", "2", "--backoff-cap", "1"], "--backoff-cap must be at least"),
    (["--causes-out", "/nonexistent-dir/c.jsonl"], "--causes-out /nonexistent-dir/c.jsonl"),
])
def test_bad_options(tmp_path, args, message):
    assert message in user_error(str(small_trace(tmp_path)), *args)


def test_changes_pairs_one_timestamps_file(tmp_path):
    trace = small_trace(tmp_path)
    assert "--changes pairs one timestamps file" in user_error(
        str(trace), "--changes", str(dataset(WASM_CHANGES)))
    assert "has 303 rows but" in user_error(str(dataset(PERCONA)), "--changes",
                                            str(dataset(WASM_CHANGES)))
    assert "no such file" in user_error(str(dataset(WASM_RECONCILES)), "--changes",
                                        str(tmp_path / "none.txt"))


def test_traces_and_timestamps_do_not_mix(tmp_path):
    message = user_error(str(small_trace(tmp_path)), str(dataset(PERCONA)))
    assert message == "give either trace files or timestamps files, not both"


def test_the_real_command_line_errors_and_warnings(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    result = run_tracer_report(str(empty))
    assert result.returncode == 2
    assert result.stderr == f"tracer: error: {empty} is empty\n"
    whole = small_trace(tmp_path)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(whole.read_bytes()[:-5])  # inside the end line
    result = run_tracer_report(str(cut), "--top", "1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("tracer: warning: ") and result.stderr.count("\n") == 1
    assert "Why each reconcile happened" in result.stdout
    result = run_tracer_report(str(whole), "--bins", "nonsense")
    assert result.returncode == 2 and result.stderr.startswith("tracer: error: --bins")
