"""Fuzzing the readers of outside files: trace files (every reader), probe files and
timestamps files. Whatever the bytes, a reader answers with data or a one-line UserError,
never another exception. Brief here (HYPOTHESIS_EXAMPLES, default 60 per reader); longer with
scripts/fuzz."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hostile_support import header, span
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer.errors import UserError

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize="CI" in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# JSON values of every kind, numbers at the edges of every integer type and of floats.
NUMBERS = st.one_of(st.integers(), st.sampled_from([2**62, 2**63, 2**64, 2**70, -1, 0]),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
FIELDS = ["type", "id", "function", "start_ns", "end_ns", "duration_ns", "request", "result",
          "error", "panic", "goroutine", "thread", "parent", "depth", "ts_ns", "kind",
          "namespace", "name", "event", "clock", "status", "args"]


@st.composite
def records(draw):
    """A span, event or end line with some fields replaced by anything."""
    base = draw(st.sampled_from([
        span(1, 0), span(2, 5, None), {"type": "event", "ts_ns": 5_000_000_000, "kind": "X",
                                       "namespace": "n", "name": "o", "event": "ADDED"},
        {"type": "end", "clock": {"monotonic_ns": 6_000_000_000, "realtime_ns": 1}}]))
    record = dict(base)
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        record[key] = draw(VALUES)
    return json.dumps(record, allow_nan=True)


LINES = st.one_of(records(), records(), st.text(max_size=40).map(lambda t: t.replace("\n", "")),
                  st.sampled_from(["[", "{", "null", "[]", '"x"', "{" * 5000, "Infinity"]))


def _write(lines: list[str], cut: bool) -> str:
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write("\n".join([json.dumps(header()), *lines]) + ("" if cut else "\n"))
    return path


def _every_reader(path: str) -> None:
    from tracer.analysis.load import load
    from tracer.exports.source import open_trace
    from tracer.plots.data import load as plot_load
    from tracer.session.tracefile import read_trace

    for read in (read_trace, lambda p: list(open_trace(p).spans()), lambda p: load([p]),
                 plot_load):
        try:
            read(path)
        except UserError as exc:
            assert "\n" not in str(exc)


@SETTINGS
@given(st.lists(LINES, max_size=12), st.booleans())
def test_trace_readers_never_fail_otherwise(lines, cut):
    path = _write(lines, cut)
    try:
        _every_reader(path)
    finally:
        os.unlink(path)


@SETTINGS
@given(st.binary(max_size=300))
def test_trace_readers_on_any_bytes(data):
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    with os.fdopen(fd, "wb") as f:
        f.write(json.dumps(header()).encode() + b"\n" + data)
    try:
        _every_reader(path)
    finally:
        os.unlink(path)


@SETTINGS
@given(st.text(max_size=300))
def test_probe_files(text):
    from tracer.probes.spec import load_probe

    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write('name = "p"\nlanguage = "go"\n[[function]]\nrole = "reconcile"\n' + text)
    try:
        try:
            probe = load_probe(path)
        except UserError:
            return
        for spec in probe.functions:
            spec.match.search("example.com/op/controllers.(*R).Reconcile")
    except UserError:
        pass
    finally:
        os.unlink(path)


@SETTINGS
@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from(
    ["reconsile_dates", "2023-01-17T13:45:57.861Z", "2023-05-12 11:52:20.338366696",
     "9999-12-31 23:59:60.999999999", "0000-01-01T00:00:00Z"])), max_size=8))
def test_timestamps_files(lines):
    from tracer.analysis.timestamps import read_timestamps

    path = Path(tempfile.mkstemp(suffix=".txt")[1])
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        try:
            read_timestamps(path)
        except UserError as exc:
            assert "\n" not in str(exc)
    finally:
        path.unlink()
