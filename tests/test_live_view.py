"""The live screen, as a person sees it: `tracer attach` inside tmux, read off the pane."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from helpers import ROOT, alive, read_lines, tracer_pid, wait_for_header, wait_until

from tracer.binary.analyze import analyze
from tracer.probes.compile import compile_plan
from tracer.targets.process import altered_code


class Tmux:
    """A private tmux server (own socket), ended by its PID."""

    def __init__(self, tmp_path, width: int, height: int, command: str) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        self.run("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                 command)
        self.server_pid = int(self.run("display-message", "-p", "#{pid}").strip())

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True,
                              text=True, check=True, timeout=10).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def keys(self, keys: str) -> None:
        self.run("send-keys", "-t", "t", keys)

    def end(self) -> None:
        try:
            os.kill(self.server_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture
def tmux(tmp_path):
    started: list[Tmux] = []

    def start(width: int, height: int, command: str) -> Tmux:
        t = Tmux(tmp_path, width, height, command)
        started.append(t)
        return t

    yield start
    for t in started:
        t.end()


def row_numbers(screen: str, label: str) -> list[str]:
    for line in screen.splitlines():
        if line.startswith(label):
            return line[len(label):].split()
    raise AssertionError(f"no row starting with {label!r} in:\n{screen}")


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_screen_counts_match_the_trace(size, operator, tmux, tmp_path):
    width, height = size
    op = operator("go1.27/sample-operator", "-workers", "4", "-calls", "600", "-rate", "200",
                  "-objects", "6", "-error-every", "7", "-requeue-every", "11",
                  "-requeue-after-every", "13", "-linger")
    trace = tmp_path / "trace.jsonl"
    command = " ".join(shlex.quote(a) for a in [
        sys.executable, "-m", "tracer", "attach", str(op.pid), "-o", str(trace)])
    pane = tmux(width, height, f"cd {shlex.quote(str(ROOT))} && {command}; sleep 600")
    wait_for_header(trace)
    op.start_work()
    done = wait_until(op.done, 60, "the operator to finish")
    time.sleep(1.5)  # a few refreshes
    screen = pane.screen()
    lines = screen.rstrip("\n").splitlines()
    assert len(lines) <= height and all(len(line) <= width for line in lines)

    pane.keys("q")
    end = wait_until(lambda: (r := read_lines(trace)) and r[-1]["type"] == "end" and r[-1],
                     30, "the trace's end line after q")
    assert end["reason"] == "quit" and end["code_restored"] is True
    assert alive(op.pid) and tracer_pid(op.pid) == 0
    plan = compile_plan(analyze(str(op.binary)))
    assert altered_code(op.pid, str(op.binary), plan.breakpoint_addresses(0), 0) == []

    spans = [r for r in read_lines(trace) if r["type"] == "span"]
    assert len(spans) == done["calls"], "no call lost while the screen was drawn"
    errors = sum(1 for s in spans if s["error"] or s["panic"])
    requeues = sum(1 for s in spans if s["result"] and (
        s["result"]["requeue"] or s["result"]["requeue_after_ns"]))

    header = lines[0]
    assert f"PID {op.pid}" in header and "controller-runtime" in header
    calls, running, _rate, _p50, _p95, _max, err, rq, _last = row_numbers(screen, "(*Sample")[1:]
    assert (int(calls), int(running), int(err), int(rq)) == (len(spans), 0, errors, requeues)

    per_object = Counter(f"{s['request']['namespace']}/{s['request']['name']}" for s in spans)
    shown = {m.group(1): int(m.group(2))
             for m in re.finditer(r"^(ns-\d+/obj-\d+)\s+(\d+)\s", screen, re.MULTILINE)}
    assert len(shown) >= min(len(per_object), 3), screen
    for key, count in shown.items():
        assert per_object[key] == count
    assert re.search(r"^idle \d+\.\d% of the time attached", screen, re.MULTILINE)
    hits = re.search(r"cost: (\d+) hits", screen)
    assert hits and int(hits.group(1)) == end["pairing"]["hits"]
    assert "q quit" in screen or height < 30


def test_view_summary_shows_a_recorded_trace(tmp_path):
    from helpers import run_tracer, sample

    trace = tmp_path / "trace.jsonl"
    result = run_tracer("run", "-o", str(trace), "-q", "--",
                        str(sample("go1.19/sample-operator")), "-calls", "120", "-objects", "4",
                        "-error-every", "5")
    assert result.returncode == 0, result.stderr
    spans = [r for r in read_lines(trace) if r["type"] == "span"]
    shown = run_tracer("view", str(trace), "--summary")
    assert shown.returncode == 0, shown.stderr
    calls, *_ = row_numbers(shown.stdout, "(*Sample")[1:]
    assert int(calls) == len(spans)
    per_object = Counter(f"{s['request']['namespace']}/{s['request']['name']}" for s in spans)
    for key, count in per_object.items():
        assert re.search(rf"^{re.escape(key)}\s+{count}\s", shown.stdout, re.MULTILINE)
