"""The command's other faces: `symbols`, help, and reading back a trace file."""

from __future__ import annotations

import json
import subprocess

from helpers import read_lines, run_tracer, sample

from tracer.session.tracefile import read_trace

RECONCILE = "example.com/sample-operator/controllers.(*SampleReconciler).Reconcile"


def nm_functions(binary) -> dict[str, int]:
    out = subprocess.run(["go", "tool", "nm", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in out.splitlines())
            if len(parts) == 3 and parts[1] in "Tt"}


def test_symbols_of_a_stripped_binary_marks_the_reconcile(tmp_path):
    result = run_tracer("symbols", str(sample("go1.19/sample-operator-stripped")), "Reconcile")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "stripped" in lines[0] and "go1.19" in lines[0]
    marked = [line for line in lines[1:] if line.startswith("*")]
    assert len(marked) == 1 and marked[0].endswith(RECONCILE)
    # The address comes from Go's function table; the unstripped twin's symbol table agrees.
    address = int(marked[0].split()[1], 16)
    assert nm_functions(sample("go1.19/sample-operator"))[RECONCILE] == address


def test_symbols_of_a_rust_binary_are_demangled_and_marked():
    result = run_tracer("symbols", str(sample("rust/rust-operator-release")), "reconcile")
    assert result.returncode == 0, result.stderr
    rows = {line[0]: line.split(None, 3)[-1] for line in result.stdout.splitlines()[1:]}
    assert rows["*"] == "rust_operator::reconcile::{{closure}}"  # the future's poll
    assert rows["+"] == "core::ptr::drop_in_place<rust_operator::reconcile::{{closure}}>"
    assert "probe kube-rs" in result.stdout.splitlines()[0]


def test_symbols_of_a_process(operator):
    op = operator("go1.27/sample-operator", "-linger")
    result = run_tracer("symbols", str(op.pid), r"\.Reconcile$")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("*") and line.endswith(RECONCILE)
               for line in result.stdout.splitlines())


def test_help_names_every_command():
    result = run_tracer("--help")
    assert result.returncode == 0
    for command in ("attach", "run", "symbols"):
        assert command in result.stdout
    attach = run_tracer("attach", "--help").stdout
    for option in ("--output", "--duration", "--symbol", "--no-args"):
        assert option in attach


def test_a_cut_trace_reads_up_to_its_last_whole_line(tmp_path):
    trace = tmp_path / "trace.jsonl"
    result = run_tracer("run", "-o", str(trace), "-q", "--",
                        str(sample("go1.19/sample-operator")), "-calls", "50")
    assert result.returncode == 0, result.stderr
    assert trace.stat().st_mode & 0o777 == 0o600, "object names are for the user alone"
    whole = read_lines(trace)
    data = trace.read_bytes()
    cut = tmp_path / "cut.jsonl"
    # Cut in the middle of the 10th span line.
    tenth = data.index(json.dumps(whole[10], separators=(",", ":")).encode())
    cut.write_bytes(data[: tenth + 20])
    back = read_trace(str(cut))
    assert back.truncated and back.end is None
    assert back.spans == whole[1:10]


def test_no_args_records_no_values(tmp_path):
    trace = tmp_path / "trace.jsonl"
    result = run_tracer("run", "-o", str(trace), "-q", "--no-args", "--",
                        str(sample("go1.27/sample-operator")), "-calls", "60",
                        "-error-every", "5")
    assert result.returncode == 0, result.stderr
    spans = [r for r in read_lines(trace) if r["type"] == "span"]
    assert len(spans) >= 60
    assert all(s["request"] is None for s in spans)
    errors = [s["error"] for s in spans if s["error"]]
    assert errors and all(e["message"] is None and e["type"] for e in errors)
