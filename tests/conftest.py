"""Fixtures that start real sample operators and the real `tracer` command, and end them."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from helpers import Operator, TracerRun, end_process, sample


@pytest.fixture
def operator(tmp_path) -> Iterator:
    started: list[Operator] = []

    def start(rel: str, *args: str) -> Operator:
        op = Operator(sample(rel), tmp_path / f"truth-{len(started)}.jsonl", list(args))
        started.append(op)
        return op

    yield start
    for op in started:
        end_process(op.proc)


@pytest.fixture
def tracer_cmd(tmp_path) -> Iterator:
    started: list[TracerRun] = []

    def start(*args: str) -> TracerRun:
        run = TracerRun(list(args), tmp_path)
        started.append(run)
        return run

    yield start
    for run in started:
        end_process(run.proc, signal.SIGINT, timeout=30)


