"""Shared helpers: real sample operators, the real `tracer` command, ground truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def research_datasets() -> Path:
    """The research datasets (shared/datasets, read-only, not in the repository):
    $TRACER_DATASETS, else shared/ beside the repository (as CI places it), else beside the
    repository this clone was made from (a clone in /tmp of a checkout that has it)."""
    if os.environ.get("TRACER_DATASETS"):
        return Path(os.environ["TRACER_DATASETS"])
    beside = ROOT.parent / "shared" / "datasets"
    if beside.is_dir():
        return beside
    try:
        origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and Path(origin).is_dir():
        cloned_from = Path(origin).resolve().parent / "shared" / "datasets"
        if cloned_from.is_dir():
            return cloned_from
    return beside
SAMPLES = ROOT / "build" / "samples"
TRACER = [sys.executable, "-m", "tracer"]

GO_BUILDS = [
    "go1.19/sample-operator",
    "go1.19/sample-operator-stripped",
    "go1.19/sample-operator-debug",
    "go1.27/sample-operator",
    "go1.27/sample-operator-stripped",
]


def sample(rel: str) -> Path:
    path = SAMPLES / rel
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/build-samples (or scripts/setup)")
    return path


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    raise AssertionError("no TracerPid line")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def end_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """End a process this test started, by its PID."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class Operator:
    """A sample operator started parked (-wait-signal) with a ground-truth file."""

    def __init__(self, binary: Path, truth: Path, args: list[str]) -> None:
        self.binary = binary
        self.truth = truth
        self.stderr_path = truth.with_suffix(".stderr")
        self.proc = subprocess.Popen(
            [str(binary), "-wait-signal", "-ground-truth", str(truth), *args],
            stdout=subprocess.PIPE,
            stderr=open(self.stderr_path, "w"),
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"operator did not start: {line!r}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start_work(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def records(self) -> list[dict]:
        """Whole lines only: the operator writes through a buffer, a line may be half out."""
        text = self.truth.read_text() if self.truth.exists() else ""
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]

    def done(self) -> dict | None:
        for record in self.records():
            if record.get("done"):
                return record
        return None

    def calls(self) -> list[dict]:
        return [r for r in self.records() if not r.get("done")]

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stray_signals(self) -> list[str]:
        """Signals the operator saw other than the SIGUSR1 the test sent to start it."""
        return [line for line in self.stderr().splitlines()
                if line.startswith("signal:") and "user defined signal 1" not in line]


class TracerRun:
    def __init__(self, args: list[str], cwd: Path) -> None:
        self.stdout_path = cwd / "tracer.stdout"
        self.stderr_path = cwd / "tracer.stderr"
        self.proc = subprocess.Popen(
            [*TRACER, *args],
            cwd=cwd,
            stdout=open(self.stdout_path, "w"),
            stderr=open(self.stderr_path, "w"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stdout(self) -> str:
        return self.stdout_path.read_text()


def run_tracer(*args: str, cwd: Path | None = None, env: dict | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TRACER, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def interrupt(run, trace: Path, timeout: float = 60) -> list[dict]:
    """Ctrl-C to a tracer run: it exits 0 and its trace ends with an end line that says so.
    The trace's lines. A run with a signal() of its own (a tracer under unshare) is
    signalled through it."""
    send = getattr(run, "signal", None) or run.proc.send_signal
    send(signal.SIGINT)
    assert run.wait(timeout) == 0, run.stderr()
    records = read_lines(trace)
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "SIGINT", records[-1]
    return records


def wait_for_header(trace: Path, run: TracerRun | None = None, timeout: float = 60) -> dict:
    """The trace's header line, written once the operator is traced."""

    def header():
        if run is not None and run.proc.poll() is not None:
            raise AssertionError(f"tracer exited early: {run.stderr()}")
        if trace.exists():
            for record in read_lines(trace) if trace.read_text().endswith("\n") else []:
                if record.get("type") == "header":
                    return record
        return None

    return wait_until(header, timeout, "the trace header")


def match_spans(truth: list[dict], spans: list[dict]) -> dict[int, dict]:
    """Each true call to the one span on its goroutine that contains it; fails on none or two."""
    by_goroutine: dict[int, list[dict]] = {}
    for span in spans:
        by_goroutine.setdefault(span["goroutine"], []).append(span)
    matched: dict[int, dict] = {}
    used: set[int] = set()
    for call in truth:
        candidates = [
            s for s in by_goroutine.get(call["goroutine"], [])
            if s["end_ns"] is not None
            and s["start_ns"] <= call["entry_ns"] and s["end_ns"] >= call["exit_ns"]
        ]
        assert len(candidates) == 1, f"call {call} has {len(candidates)} spans"
        span = candidates[0]
        assert span["id"] not in used, f"span {span} holds two calls"
        used.add(span["id"])
        matched[call["seq"]] = span
    return matched


# Error types whose Error() returns one of their fields unchanged: the tracer gives their
# message. Any other type's message is null (never a guess), its fields by name where the
# backend reads them.
MESSAGE_TYPES = {"*errors.errorString", "*fmt.wrapError", "*fmt.wrapErrors",
                 "*errors.StatusError"}


def check_error(truth: dict | None, error: dict | None) -> None:
    """A span's error against the operator's own (%T, Error()): the type, and the message
    exact or null."""
    if truth is None:
        assert error is None
        return
    assert error is not None, f"{truth} recorded as no error"
    assert error["type"] == truth["type"]
    if truth["type"] in MESSAGE_TYPES:
        assert error["message"] == truth["message"]
    else:
        assert error["message"] is None, f"{error}: a message guessed for {truth['type']}"
    if truth["type"] == "*controllers.RetryableError" and "fields" in error:
        # The sample's RetryableError.Error() returns its Msg field.
        assert error["fields"]["Msg"] == truth["message"]


def check_fields(call: dict, span: dict) -> None:
    assert span["request"] == {"namespace": call["namespace"], "name": call["name"]}
    if call["panic"] is not None:
        assert span["status"] == "panic"
        assert span["panic"]["message"] == call["panic"]
        return
    assert span["result"] == {"requeue": call["requeue"],
                              "requeue_after_ns": call["requeue_after_ns"]}
    check_error(call["error"], span["error"])
    assert span["status"] == ("error" if call["error"] else "ok")


# Unlimited calls at a steady pace, so the rate before and after tracing can be compared.
STEADY_KNOBS = ["-workers", "4", "-calls", "0", "-rate", "400", "-work-us", "200",
                "-error-every", "9", "-requeue-every", "13", "-panic-every", "101"]


def calls_per_second(op: Operator, seconds: float = 1.0) -> float:
    """The operator's reconcile rate over the next `seconds`, from the entry times in its
    ground truth (CLOCK_MONOTONIC, as time.monotonic_ns). Not from the file's growth: the
    operator writes it in 64 KiB chunks, about two a second at these rates, so a window
    would catch one, two or three of them."""
    t0 = time.monotonic_ns()
    time.sleep(seconds)
    t1 = time.monotonic_ns()

    def entries() -> list[int] | None:
        found = [r["entry_ns"] for r in op.records() if "entry_ns" in r]
        return found if found and max(found) >= t1 else None

    # Until a call after the window is written: every call inside it is on disk by then.
    found = wait_until(entries, 10, "the ground truth past the window")
    return sum(t0 <= ts < t1 for ts in found) / seconds


def baseline(op: Operator, seconds: float = 1.0) -> float:
    """Start its work and measure its untraced rate."""
    op.start_work()
    time.sleep(0.5)
    return calls_per_second(op, seconds)


def assert_every_call_once(truth: list[dict], spans: list[dict]) -> None:
    """Go: every true call in exactly one span that contains it, with its fields."""
    assert len(spans) == len(truth), "every call exactly once, nothing more"
    matched = match_spans(truth, spans)
    for call in truth:
        check_fields(call, matched[call["seq"]])


def assert_native_calls_once(truth: list[dict], spans: list[dict]) -> None:
    """Native: every true call in exactly one span on its thread, argument and return."""
    assert len(spans) == len(truth), "every call exactly once"
    by_thread: dict[int, list[dict]] = {}
    for span in spans:
        by_thread.setdefault(span["thread"], []).append(span)
    used = set()
    for call in truth:
        found = [s for s in by_thread.get(call["thread"], [])
                 if s["start_ns"] <= call["entry_ns"] and s["end_ns"] >= call["exit_ns"]]
        assert len(found) == 1, f"{call}: {len(found)} spans"
        span = found[0]
        assert span["id"] not in used
        used.add(span["id"])
        assert span["args"][0] == call["arg"]
        assert span["return"] == call["ret"]
        assert span["status"] == "ok"
