"""Helpers for the `tracer report` tests: the research datasets, hand-written trace files, and
running the command (its click object in-process, or the real `python -m tracer`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import research_datasets

from tracer.front.report_cmd import report

ROOT = Path(__file__).resolve().parents[2]
# shared/datasets beside the repository, or beside the one this clone came from.
DATASETS = research_datasets()
PERCONA = "percona-mongodb-reconcile-times.csv"
WASM_RECONCILES = "wasm-operator-reconcile-times-5s.txt"
WASM_CHANGES = "wasm-operator-change-times-5s.txt"

FUNCTION = "example.com/op/controllers.(*MemcachedReconciler).Reconcile"
MS = 1_000_000
S = 1_000_000_000
CLOCK = {"monotonic_ns": 1_000 * S, "realtime_ns": 1_700_000_000 * S}


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the research datasets belong in shared/datasets "
                    f"beside the repository ({ROOT}), or set TRACER_DATASETS")
    return path


def header(functions: list[str] | None = None, clock: dict | None = None) -> dict:
    return {"type": "header", "schema": 1, "tracer_version": "test", "clock": clock or CLOCK,
            "target": {"pid": 1, "name": "op", "argv": None},
            "binary": {"path": "op", "build_id": None, "language": "go",
                       "go_version": "go1.22.0", "stripped": False, "dwarf": True,
                       "pie": False},
            "backend": "gdb", "probe": "controller-runtime",
            "functions": functions or [FUNCTION], "breakpoints": 2, "capture_args": True,
            "attach_pause_ms": 1.0, "notes": []}


def end(at_ns: int, clock: dict | None = None) -> dict:
    clock = clock or CLOCK
    return {"type": "end", "reason": "SIGINT",
            "clock": {"monotonic_ns": at_ns,
                      "realtime_ns": at_ns + clock["realtime_ns"] - clock["monotonic_ns"]},
            "target_status": None, "spans": 0, "unfinished": 0, "pairing": None,
            "agent_errors": 0, "breakpoints_removed": 2, "code_restored": True}


def span(id: int, start: int, end: int | None, name: str = "a", namespace: str = "ns",
         function: str = FUNCTION, requeue: bool = False, after: int = 0,
         error: str | None = None, panic: bool = False, goroutine: int = 7) -> dict:
    """A span line as the tracer writes it; times are CLOCK_MONOTONIC ns."""
    if end is None:  # a call still running has no result yet
        error, panic, requeue, after = None, False, False, 0
    status = ("unfinished" if end is None else "panic" if panic
              else "error" if error else "ok")
    return {"type": "span", "id": id, "function": function, "start_ns": start, "end_ns": end,
            "duration_ns": None if end is None else end - start, "goroutine": goroutine,
            "thread": 100, "request": {"namespace": namespace, "name": name},
            "result": None if panic or end is None else {"requeue": requeue,
                                                         "requeue_after_ns": after},
            "error": {"type": error, "message": "boom"} if error else None,
            "panic": {"type": "string", "message": "oops"} if panic else None,
            "status": status}


def event(ts: int, name: str = "a", namespace: str = "ns", kind: str = "Memcached",
          verb: str = "MODIFIED", version: int = 1) -> dict:
    return {"type": "event", "ts_ns": ts, "kind": kind, "namespace": namespace, "name": name,
            "event": verb, "resource_version": str(version), "generation": version}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    return path


def write_trace(path: Path, records: list[dict], at_end: int | None = None,
                clock: dict | None = None) -> Path:
    """Header, the records, and an end line (at `at_end`, or just after the last time)."""
    times = [t for r in records for t in (r.get("start_ns"), r.get("end_ns"), r.get("ts_ns"))
             if t is not None]
    last = at_end if at_end is not None else max(times, default=CLOCK["monotonic_ns"]) + MS
    functions = sorted({r["function"] for r in records if r.get("function")}) or None
    return write_jsonl(path, [header(functions, clock), *records, end(last, clock)])


def invoke(*args: str):
    """The click command in-process; UserError comes back as `result.exception`."""
    return CliRunner().invoke(report, list(args), catch_exceptions=True)


def report_json(*args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def run_tracer_report(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command line: `python -m tracer report ...` (needs `report` registered)."""
    result = subprocess.run([sys.executable, "-m", "tracer", "report", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    if "No such command 'report'" in result.stderr:
        pytest.fail("`tracer report` is not registered: tracer/cli.py needs "
                    "`cli.add_command(report)` from tracer.front.report_cmd")
    return result
