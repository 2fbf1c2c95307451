"""Run the sample operators built by scripts/build-samples and check their ground truth."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "build" / "samples"
RECONCILE_SYMBOL = "example.com/sample-operator/controllers.(*SampleReconciler).Reconcile"
GO_BINARIES = [
    f"go{v}/sample-operator{s}" for v in ("1.19", "1.27") for s in ("", "-debug", "-stripped")
]
C_BINARIES = ["c/c-operator", "c/c-operator-stripped"]
TIMEOUT = 60.0

CALLS = 300
KNOBS = {
    "error-every": 7,
    "requeue-every": 11,
    "requeue-after-every": 13,
    "recurse-every": 17,
    "panic-every": 29,
}
GO_FIELDS = {
    "seq": int,
    "entry_ns": int,
    "exit_ns": int,
    "goroutine": int,
    "thread": int,
    "namespace": str,
    "name": str,
    "requeue": bool,
    "requeue_after_ns": int,
    "error": (dict, type(None)),
    "panic": (str, type(None)),
    "cause": str,
    "recurse_depth": int,
    "stack_moved": bool,
}
C_FIELDS = {"seq": int, "entry_ns": int, "exit_ns": int, "thread": int, "arg": int, "ret": int}
ERROR_TYPES = {"*errors.errorString", "*fmt.wrapError", "*controllers.RetryableError"}
CAUSES = {"event", "requeue", "requeue-after", "error-backoff", "panic-backoff"}


def sample(rel: str) -> Path:
    path = SAMPLES / rel
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"sample binary {path} is missing: run scripts/build-samples", pytrace=False)
    return path


@contextmanager
def started(*args: object) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for the process to exit by itself; it must exit 0."""
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{err}"
    return out, err


def read_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert ready, "no 'ready' line on stdout"
    assert proc.stdout.readline().strip() == f"ready pid={proc.pid}"


def wait_for(cond, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines()]


def load_ground_truth(path: Path, fields: dict[str, object]) -> list[dict]:
    """Check well-formedness and the final done line; return the call records."""
    lines = read_lines(path)
    assert lines, "empty ground truth"
    *records, last = lines
    assert last == {"done": True, "calls": len(records)}
    for rec in records:
        assert set(rec) == set(fields), rec
        for key, typ in fields.items():
            assert isinstance(rec[key], typ), (key, rec)
        assert 0 < rec["entry_ns"] <= rec["exit_ns"], rec
    assert sorted(r["seq"] for r in records) == list(range(1, len(records) + 1))
    return records


def no_signal_lines(stderr: str) -> None:
    assert not [ln for ln in stderr.splitlines() if ln.startswith("signal:")], stderr


def knob_args() -> list[str]:
    return [a for k, v in KNOBS.items() for a in (f"-{k}", str(v))]


def every(seq: int, knob: str) -> bool:
    return seq % KNOBS[knob] == 0


@pytest.mark.parametrize("rel", GO_BINARIES)
def test_go_sample_ground_truth(rel: str, tmp_path: Path) -> None:
    binary = sample(rel)
    gt = tmp_path / "gt.jsonl"
    args = ["-calls", CALLS, "-workers", 4, "-work-us", 200, "-ground-truth", gt, *knob_args()]
    with started(binary, *args) as proc:
        _, err = finish(proc)
    no_signal_lines(err)
    records = load_ground_truth(gt, GO_FIELDS)

    causes = Counter(r["cause"] for r in records)
    assert set(causes) <= CAUSES
    assert causes["event"] == CALLS
    # every follow-up result was honoured exactly once
    assert causes["requeue"] == sum(r["requeue"] for r in records) > 0
    assert causes["requeue-after"] == sum(r["requeue_after_ns"] > 0 for r in records) > 0
    assert causes["error-backoff"] == sum(r["error"] is not None for r in records) > 0
    assert causes["panic-backoff"] == sum(r["panic"] is not None for r in records) > 0

    for r in records:
        seq, where = r["seq"], f"{r['namespace']}/{r['name']} (call {r['seq']})"
        assert re.fullmatch(r"ns-[0-2]", r["namespace"]), r
        assert re.fullmatch(r"obj-(\d|[1-4]\d)", r["name"]), r
        panics = every(seq, "panic-every")
        errs = not panics and every(seq, "error-every")
        after = not (panics or errs) and every(seq, "requeue-after-every")
        requeue = not (panics or errs or after) and every(seq, "requeue-every")
        assert (r["panic"] is not None) == panics, r
        assert (r["error"] is not None) == errs, r
        assert (r["requeue_after_ns"] > 0) == after, r
        assert r["requeue"] == requeue, r
        assert (r["recurse_depth"] > 0) == every(seq, "recurse-every"), r
        if panics:
            assert where in r["panic"], r
        if errs:
            assert set(r["error"]) == {"type", "message"}, r
            assert where in r["error"]["message"], r
        if after:
            assert 1_000_000 <= r["requeue_after_ns"] <= 5_000_000, r
        assert r["exit_ns"] - r["entry_ns"] >= 200_000, r  # -work-us 200

    assert {r["error"]["type"] for r in records if r["error"]} == ERROR_TYPES
    assert any(r["stack_moved"] for r in records), "no recursion grew the goroutine stack"
    assert len({r["goroutine"] for r in records}) >= 3
    assert all(r["goroutine"] > 0 and r["thread"] > 0 for r in records)


@pytest.mark.parametrize("rel", ["go1.19/sample-operator", "go1.27/sample-operator"])
def test_go_sample_wait_signal(rel: str, tmp_path: Path) -> None:
    gt = tmp_path / "gt.jsonl"
    with started(sample(rel), "-wait-signal", "-calls", 50, "-ground-truth", gt) as proc:
        read_ready(proc)
        time.sleep(0.5)
        assert proc.poll() is None
        assert read_lines(gt) == [], "calls happened before SIGUSR1"
        os.kill(proc.pid, signal.SIGUSR1)
        _, err = finish(proc)
    assert err.splitlines() == ["signal: user defined signal 1"]
    assert len(load_ground_truth(gt, GO_FIELDS)) == 50


@pytest.mark.parametrize("rel", ["go1.19/sample-operator", "go1.27/sample-operator"])
def test_go_sample_linger_then_sigterm(rel: str, tmp_path: Path) -> None:
    gt = tmp_path / "gt.jsonl"
    with started(sample(rel), "-linger", "-calls", 20, "-ground-truth", gt) as proc:
        wait_for(lambda: gt.exists() and '"done"' in gt.read_text(), "the done line")
        time.sleep(0.3)
        assert proc.poll() is None, "exited despite -linger"
        os.kill(proc.pid, signal.SIGTERM)
        _, err = finish(proc)
    assert err.splitlines() == ["signal: terminated"]
    assert len(load_ground_truth(gt, GO_FIELDS)) == 20


@pytest.mark.parametrize("rel", ["go1.19/sample-operator", "go1.27/sample-operator"])
def test_go_sample_unlimited_until_sigint(rel: str, tmp_path: Path) -> None:
    gt = tmp_path / "gt.jsonl"
    with started(sample(rel), "-calls", 0, "-rate", 2000, "-ground-truth", gt) as proc:
        time.sleep(0.5)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGINT)
        _, err = finish(proc)
    assert err.splitlines() == ["signal: interrupt"]
    *records, last = read_lines(gt)
    assert last == {"interrupted": True, "signal": "interrupt", "calls": len(records)}
    assert len(records) > 10
    for rec in records:
        assert set(rec) == set(GO_FIELDS)


@pytest.mark.parametrize("rel", C_BINARIES)
def test_c_sample_ground_truth(rel: str, tmp_path: Path) -> None:
    gt = tmp_path / "gt.jsonl"
    with started(
        sample(rel), "-threads", 2, "-calls", CALLS, "-work-us", 100, "-ground-truth", gt
    ) as proc:
        _, err = finish(proc)
    no_signal_lines(err)
    records = load_ground_truth(gt, C_FIELDS)
    assert len(records) == CALLS
    assert sorted(r["arg"] for r in records) == list(range(CALLS))
    for r in records:
        assert r["ret"] == r["arg"] * 7 + 3, r
        assert r["exit_ns"] - r["entry_ns"] >= 100_000, r
    assert len({r["thread"] for r in records}) == 2


@pytest.mark.parametrize("rel", C_BINARIES)
def test_c_sample_wait_signal_linger(rel: str, tmp_path: Path) -> None:
    gt = tmp_path / "gt.jsonl"
    with started(sample(rel), "-wait-signal", "-linger", "-calls", 40, "-ground-truth", gt) as proc:
        read_ready(proc)
        time.sleep(0.5)
        assert read_lines(gt) == [], "calls happened before SIGUSR1"
        os.kill(proc.pid, signal.SIGUSR1)
        wait_for(lambda: '"done"' in gt.read_text(), "the done line")
        time.sleep(0.3)
        assert proc.poll() is None, "exited despite -linger"
        os.kill(proc.pid, signal.SIGTERM)
        _, err = finish(proc)
    assert err.splitlines() == ["signal: user defined signal 1", "signal: terminated"]
    assert len(load_ground_truth(gt, C_FIELDS)) == 40


def test_c_sample_unlimited_until_sigint(tmp_path: Path) -> None:
    gt = tmp_path / "gt.jsonl"
    with started(sample("c/c-operator"), "-calls", 0, "-rate", 2000, "-ground-truth", gt) as proc:
        time.sleep(0.5)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGINT)
        _, err = finish(proc)
    assert err.splitlines() == ["signal: interrupt"]
    *records, last = read_lines(gt)
    assert last == {"interrupted": True, "signal": "interrupt", "calls": len(records)}
    assert len(records) > 10


def symbols(path: Path) -> set[str]:
    with path.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name for s in symtab.iter_symbols()} if symtab else set()


@pytest.mark.parametrize("rel", GO_BINARIES + C_BINARIES)
def test_sample_symbols(rel: str) -> None:
    path = sample(rel)
    want = "reconcile" if rel.startswith("c/") else RECONCILE_SYMBOL
    if rel.endswith("-stripped"):
        assert symbols(path) == set()
        if not rel.startswith("c/"):  # Go keeps function names in .gopclntab
            assert RECONCILE_SYMBOL.encode() in path.read_bytes()
    else:
        assert want in symbols(path)
