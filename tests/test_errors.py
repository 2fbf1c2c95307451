"""Bad input: one clear line on stderr, exit code 2, no traceback, no trace file."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT, TRACER, end_process, run_tracer, sample


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tracer: error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def no_trace_files(folder) -> bool:
    return not list(folder.glob("trace-*"))


def free_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_no_such_pid(tmp_path):
    result = run_tracer("attach", str(free_pid()), cwd=tmp_path)
    assert_one_line_error(result, "no process with PID")
    assert no_trace_files(tmp_path)


def test_not_a_pid_and_no_kubeconfig(tmp_path):
    # Not a number: a pod's name, which needs a kubeconfig to be found.
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env.update(HOME=str(tmp_path), KUBECONFIG="")
    result = run_tracer("attach", "my-operator", cwd=tmp_path, env=env)
    assert_one_line_error(result, "'my-operator' is not a PID", "no kubeconfig")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_no_permission_to_trace(operator, tmp_path):
    op = operator("go1.19/sample-operator", "-linger")
    # The test's own folder is root's alone; nobody runs from /tmp and is refused first.
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *TRACER, "attach",
         str(op.pid)],
        cwd="/tmp", capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/tmp"},
    )
    assert_one_line_error(result, "no permission to trace")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_root_that_may_ptrace_but_not_read_memory_is_refused(tmp_path):
    """A container that drops ALL capabilities and adds back only SYS_PTRACE: ptrace works,
    but a non-root operator's /proc/PID/mem (mode 0600, its own) does not open, so no
    breakpoint could be seen and the code check at detach could not run. Refused before
    anything is attached."""
    # pytest's folders are root's alone: the operator's ground truth goes where nobody can
    # write.
    folder = Path(tempfile.mkdtemp(prefix="tracer-nobody-"))
    os.chown(folder, 65534, 65534)
    op = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         str(sample("go1.19/sample-operator")), "-wait-signal", "-ground-truth",
         str(folder / "truth.jsonl"), "-linger"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert op.stdout.readline().startswith("ready")
        result = subprocess.run(
            ["setpriv", "--bounding-set=-all,+sys_ptrace", *TRACER, "attach", str(op.pid)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert_one_line_error(result, f"no permission to read the memory of process {op.pid}",
                              "DAC_OVERRIDE")
        assert no_trace_files(tmp_path)
        with open(f"/proc/{op.pid}/status") as f:
            assert "TracerPid:\t0\n" in f.read()
    finally:
        end_process(op)
        shutil.rmtree(folder)


def test_function_matches_nothing_shows_nearest(operator, tmp_path):
    op = operator("go1.19/sample-operator-stripped", "-linger")
    result = run_tracer("attach", str(op.pid), "--symbol", "Reconcle$", cwd=tmp_path)
    line = assert_one_line_error(result, "no function matches", "nearest:")
    assert "(*SampleReconciler).Reconcile" in line
    assert no_trace_files(tmp_path)


def test_bad_regex(operator, tmp_path):
    op = operator("go1.19/sample-operator", "-linger")
    result = run_tracer("attach", str(op.pid), "--symbol", "Reconcile(", cwd=tmp_path)
    assert_one_line_error(result, "Reconcile(")
    assert no_trace_files(tmp_path)


def test_gdb_missing(operator, tmp_path):
    op = operator("go1.19/sample-operator", "-linger")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**os.environ, "PATH": str(bin_dir)}
    assert shutil.which("gdb", path=str(bin_dir)) is None
    result = run_tracer("attach", str(op.pid), cwd=tmp_path, env=env)
    assert_one_line_error(result, "gdb is not installed")
    assert no_trace_files(tmp_path)


def test_stripped_native_binary(tmp_path):
    binary = sample("c/c-operator-stripped")
    result = run_tracer("run", "--symbol", "reconcile", "--", str(binary), cwd=tmp_path)
    assert_one_line_error(result, "stripped", "not a Go binary")
    assert no_trace_files(tmp_path)


def test_native_binary_needs_a_symbol(tmp_path):
    result = run_tracer("run", "--", str(sample("c/c-operator")), cwd=tmp_path)
    assert_one_line_error(result, "--symbol")
    assert no_trace_files(tmp_path)


def test_not_an_executable(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    result = run_tracer("symbols", str(text), cwd=tmp_path)
    assert_one_line_error(result)


def test_output_folder_missing(operator, tmp_path):
    op = operator("go1.19/sample-operator", "-linger")
    result = run_tracer("attach", str(op.pid), "-o", str(tmp_path / "no" / "t.jsonl"),
                        cwd=tmp_path)
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "no").exists()
