"""What a plot needs from its input, in compact arrays: a trace's spans, or a timestamps
file's start times. Times are wall-clock ns (UTC), so both kinds share one time axis."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from tracer.analysis.timestamps import read_timestamps, sniff
from tracer.errors import UserError
from tracer.exports import spans as sp
from tracer.exports.source import TraceStream
from tracer.session.tracefile import Damage, check_readable, parse_header
from tracer.terminal import visible


@dataclass
class PlotInput:
    path: str
    title: str
    starts: np.ndarray  # int64 wall ns, sorted (spans are sorted by start too)
    # Trace files only (empty for a timestamps file):
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # run end if unfinished
    kinds: list[str] = field(default_factory=list)
    objects: list[str | None] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    window: tuple[int, int] | None = None  # the run, attach to end, wall ns
    truncated: bool = False  # the trace ends mid-line; its whole lines were read
    damage: Damage | None = None  # lines left out (not records, or damaged times)

    @property
    def starts_only(self) -> bool:
        return not self.kinds

    def __len__(self) -> int:
        return len(self.starts)


def _label(text: str | None) -> str | None:
    """Outside text as a figure shows it: controls made visible, and `$` kept from starting
    matplotlib's mathtext (an object named `$\\frac{$` would fail the whole figure)."""
    return None if text is None else visible(text).replace("$", r"\$")


def load(path: str) -> PlotInput:
    """A trace file or a timestamps file, told apart by the first line."""
    first = check_readable(path, "trace or timestamps file")
    if first.lstrip().startswith(b"{"):
        return _from_trace(TraceStream(path, parse_header(path, first)))
    if sniff(first.decode("latin-1")):
        read = read_timestamps(path)
        starts = np.array(sorted(read.starts_ns), dtype=np.int64)
        return PlotInput(path, f"{os.path.basename(path)}: {len(starts)} reconcile starts",
                         starts, truncated=read.truncated)
    raise UserError(f"{path} is neither a tracer trace file nor a timestamps file")


def _from_trace(stream: TraceStream) -> PlotInput:
    rows = [(s["start_ns"], s.get("end_ns"), sp.kind(s), _label(sp.object_name(s)),
             _label(sp.worker_name(s))) for s in stream.spans()]
    if not rows:
        why = f" ({stream.damage.message(stream.path)})" if stream.damage else ""
        raise UserError(f"{stream.path} holds no call to plot{why}")
    rows.sort(key=lambda r: r[0])
    offset = stream.clock_offset
    run_end = stream.end_ns()
    starts = np.array([r[0] for r in rows], dtype=np.int64) + offset
    ends = np.array([run_end if r[1] is None else r[1] for r in rows], dtype=np.int64) + offset
    attach = stream.start_ns
    window = (min(int(starts[0]), attach + offset) if attach is not None else int(starts[0]),
              max(int(ends.max()), run_end + offset))
    target = (stream.header.get("target") or {}).get("name") or "target"
    functions = stream.header.get("functions") or []
    what = sp.short_function(functions[0]) if len(functions) == 1 else "traced calls"
    title = _label(f"{target}: {len(rows)} calls of {what}")
    return PlotInput(stream.path, title, starts, ends, [r[2] for r in rows],
                     [r[3] for r in rows], [r[4] for r in rows], window, stream.truncated,
                     stream.damage)
