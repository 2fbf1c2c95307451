"""Races a neighbour can cause: the operator killed while the tracer attaches, and two
tracers started at the same moment. Each ends in one accurate line (exit 2), never an
internal error, and never "run as root" to root."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from helpers import TRACER, sample


def _operator() -> subprocess.Popen:
    return subprocess.Popen([str(sample("go1.27/sample-operator")), "-workers", "2",
                             "-rate", "200", "-linger"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("delay", [0.0, 0.9, 1.0, 1.2, 1.3, 1.6])
def test_operator_killed_during_the_attach(delay, tmp_path):
    op = _operator()
    time.sleep(0.3)
    tracer = subprocess.Popen([*TRACER, "attach", str(op.pid), "-o", str(tmp_path / "t.jsonl"),
                               "-q", "-d", "3"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    os.kill(op.pid, signal.SIGKILL)
    op.wait()
    _, err = tracer.communicate(timeout=120)
    assert "internal error" not in err and "MIError" not in err, err
    if tracer.returncode == 2:
        lines = err.strip().splitlines()
        assert len([x for x in lines if x.startswith("tracer: error:")]) == 1, err
        assert "exited" in err or "no process" in err, err
    else:
        assert tracer.returncode in (0, 1), err  # attached in time: the run ended with it


def test_two_tracers_at_once_the_loser_is_told_why(tmp_path):
    op = _operator()
    try:
        time.sleep(0.3)
        runs = [subprocess.Popen([*TRACER, "attach", str(op.pid), "-o",
                                  str(tmp_path / f"t{i}.jsonl"), "-q", "-d", "4"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
        results = [(r.wait(timeout=120), r.stderr.read()) for r in runs]
    finally:
        op.kill()
        op.wait()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "already traced by PID" in loser, loser
    if os.geteuid() == 0:
        assert "as root" not in loser
    assert len([x for x in loser.splitlines() if x.startswith("tracer: error:")]) == 1, loser
