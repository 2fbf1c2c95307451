"""A catalogue of bad input across every command: each answered with one line on stderr
that says what is wrong, exit code 2, no traceback, and no file left behind."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers import TRACER, Operator, end_process, sample

# {pid}: a lingering Go operator; {c}: the C operator; {free}: a PID nobody has;
# {dir}: a folder; {text}: a text file; {empty}: an empty file; {foreign}: JSON lines that
# are not a trace; {binary}: random bytes; {script}: an executable shell script;
# {zombie}: a child that exited and was not reaped.
CASES = [
    ("attach", [], "name what to trace: a PID, a pod"),
    ("attach", ["my-operator", "--kubeconfig", "/nonexistent"],
     "--kubeconfig /nonexistent: no such file"),
    ("attach", ["0"], "0 is not a process id"),
    ("attach", ["{free}"], "no process with PID"),
    ("attach", ["{zombie}"], "has exited (zombie)"),
    ("attach", ["{pid}", "--duration", "0"], "--duration"),
    ("attach", ["{pid}", "--duration", "soon"], "--duration"),
    ("attach", ["{pid}", "--symbol", "Reconcile("], "missing )"),
    ("attach", ["{pid}", "--symbol", "NoSuchFunction$"], "nearest:"),
    ("attach", ["{pid}", "--symbol", "."], "make the regex narrower"),
    ("attach", ["{pid}", "-o", "{dir}/missing/t.jsonl"], "does not exist"),
    ("attach", ["{pid}", "-o", "{dir}"], "is a folder"),
    ("attach", ["{pid}", "--backend", "lldb"], "'lldb' is not one of"),
    ("attach", ["{pid}", "--max-stopped", "150%"], "below 100%"),
    ("attach", ["{pid}", "--max-stopped", "lots"], "not a percentage"),
    ("attach", ["{pid}", "--budget-window", "0.1"], "--budget-window"),
    ("attach", ["{pid}", "--frobnicate"], "No such option '--frobnicate'"),
    ("attach", ["{c}"], "not a Go binary"),
    ("run", [], "Missing argument 'COMMAND"),
    ("run", ["--", "/no/such/program"], "command not found"),
    ("run", ["--", "{text}"], "not executable"),
    ("run", ["--", "{script}"], "not an ELF"),
    ("run", ["--symbol", "reconcile", "--", "{stripped_c}"], "stripped"),
    ("symbols", ["/no/such/file"], "neither a running PID nor a file"),
    ("symbols", ["{text}"], "not an ELF"),
    ("symbols", ["{dir}"], "is a directory"),
    ("symbols", ["{go}", "Reconcile("], "missing )"),
    ("symbols", ["{go}", "NoSuchFunction$"], "nearest:"),
    ("view", ["{dir}/none.jsonl"], "no such trace file"),
    ("view", ["{empty}", "--summary"], "is empty"),
    ("view", ["{foreign}", "--summary"], "not a tracer trace file"),
    ("view", ["{binary}", "--summary"], "not a tracer trace file"),
    ("view", ["{trace}", "--speed", "0"], "--speed"),
    ("view", ["{trace}"], "use --summary"),
    ("nonsense", [], "No such command 'nonsense'"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input")
    op = Operator(sample("go1.19/sample-operator"), folder / "truth.jsonl", ["-linger"])
    c_op = Operator(sample("c/c-operator"), folder / "c-truth.jsonl", ["-linger"])
    zombie = subprocess.Popen(["true"])
    while open(f"/proc/{zombie.pid}/status").read().find("State:\tZ") < 0:
        pass
    files = folder / "files"
    files.mkdir()
    (files / "notes.txt").write_text("hello\n")
    (files / "empty.jsonl").write_text("")
    (files / "foreign.jsonl").write_text(json.dumps({"level": "info", "msg": "hi"}) + "\n")
    (files / "random.bin").write_bytes(os.urandom(4096))
    script = files / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    trace = files / "trace.jsonl"
    header = {"type": "header", "schema": 1, "clock": {"monotonic_ns": 1, "realtime_ns": 2},
              "target": {"pid": 1, "name": "x"}, "binary": {}, "probe": "p", "backend": "gdb"}
    trace.write_text(json.dumps(header) + "\n")
    free = 4_000_000
    while os.path.exists(f"/proc/{free}"):
        free -= 1
    values = {
        "pid": op.pid, "c": c_op.pid, "free": free, "zombie": zombie.pid, "dir": str(files),
        "text": str(files / "notes.txt"), "empty": str(files / "empty.jsonl"),
        "foreign": str(files / "foreign.jsonl"), "binary": str(files / "random.bin"),
        "script": str(script), "trace": str(trace),
        "stripped_c": str(sample("c/c-operator-stripped")),
        "go": str(sample("go1.19/sample-operator-stripped")),
    }
    yield values
    zombie.wait()
    end_process(op.proc)
    end_process(c_op.proc)


@pytest.mark.parametrize(("command", "args", "needle"), CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input(command, args, needle, world, tmp_path):
    argv = [command, *(a.format(**world) for a in args)]
    before = set(os.listdir(world["dir"]))
    result = subprocess.run([*TRACER, *argv], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, (argv, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, (argv, result.stderr)
    assert lines[0].startswith("tracer: error: ")
    assert "Traceback" not in result.stderr
    assert needle in lines[0], (argv, lines[0])
    assert result.stdout == ""
    assert os.listdir(tmp_path) == [], "nothing written where it ran"
    assert set(os.listdir(world["dir"])) == before, "nothing written next to the inputs"
