"""Real traces, recorded once per test session from the sample operators by the real tracer."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_support import start_receiver
from helpers import run_tracer, sample


def _record(folder: Path, name: str, *args: str) -> Path:
    trace = folder / f"{name}.jsonl"
    result = run_tracer("run", "-o", str(trace), "-q", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return trace


@pytest.fixture(scope="session")
def go_trace(tmp_path_factory) -> Path:
    """Every outcome (ok, error, panic, requeue, requeue-after) over 60 objects, 4 workers."""
    return _record(tmp_path_factory.mktemp("go"), "go", "--",
                   str(sample("go1.27/sample-operator")), "-calls", "300", "-objects", "20",
                   "-error-every", "7", "-requeue-every", "11", "-requeue-after-every", "13",
                   "-panic-every", "17")


@pytest.fixture(scope="session")
def unfinished_trace(tmp_path_factory) -> Path:
    """Slow calls cut by --duration: some are still running when the run ends."""
    trace = _record(tmp_path_factory.mktemp("unfinished"), "unfinished", "--duration", "1",
                    "--", str(sample("go1.27/sample-operator")), "-work-us", "150000",
                    "-objects", "5", "-error-every", "3", "-requeue-every", "4",
                    "-requeue-after-every", "5")
    assert '"status":"unfinished"' in trace.read_text(), "no call was running at the end"
    return trace


@pytest.fixture(scope="session")
def native_trace(tmp_path_factory) -> Path:
    """A C operator: threads, arguments and return values, no request."""
    return _record(tmp_path_factory.mktemp("native"), "native", "--symbol", "^reconcile$", "--",
                   str(sample("c/c-operator")), "-calls", "200", "-threads", "3")


@pytest.fixture
def otlp_receiver():
    state, server, thread = start_receiver()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)
