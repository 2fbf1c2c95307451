"""Several traced processes into one trace file (`tracer attach -l`): one header naming every
target, spans renumbered so ids stay unique in the file, one end line for the whole run.

Each source is written through its own `SourceWriter`, which a Receiver takes in place of a
TraceWriter. Lines that arrive before every source has its header (or has failed) wait in
memory: the file's first line must be the header, and attaching takes a few seconds at most.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from tracer.session.tracefile import TraceWriter

# Header fields that differ per target: kept in `targets`, not at the top.
PER_TARGET = ("target", "binary", "k8s", "via", "attach_pause_ms", "breakpoints",
              "backend", "backend_choice", "notes", "clock")


class MergedTrace:
    def __init__(self, output: str, sources: int,
                 on_error: Callable[[OSError], None] | None = None) -> None:
        self.output = output
        self.sources = sources
        self.on_error = on_error
        self._lock = threading.Lock()
        self._headers: dict[int, dict] = {}
        self._gone: set[int] = set()  # sources that ended before their header
        self._pending: list[tuple[int, dict]] = []
        self._writer: TraceWriter | None = None
        self._ids = itertools.count(1)
        self._id_maps: dict[int, dict[int, int]] = {}
        self._ends: dict[int, dict] = {}
        self.header: dict | None = None
        self.closed = False

    @property
    def writer(self) -> TraceWriter | None:
        return self._writer

    def source(self, index: int) -> SourceWriter:
        return SourceWriter(self, index)

    def record(self, line: dict) -> None:
        """A line of no source (a watch event), held back until the header is out."""
        with self._lock:
            if self._writer is None:
                self._pending.append((-1, line))
            elif not self.closed:
                self._writer.write(line)

    def source_gone(self, index: int) -> None:
        """A source that will write nothing (its agent failed before tracing)."""
        with self._lock:
            if index not in self._headers:
                self._gone.add(index)
            self._maybe_open()

    # -- called by the sources, under no lock of theirs ------------------------------------
    def _write(self, index: int, record: dict) -> None:
        with self._lock:
            if record.get("type") == "header":
                self._headers[index] = record
                self._maybe_open()
                return
            if record.get("type") == "end":
                self._ends[index] = record
                return
            if self._writer is None:
                self._pending.append((index, record))
            else:
                self._out(index, record)

    def _maybe_open(self) -> None:
        if self._writer is not None or not self._headers:
            return
        if len(self._headers) + len(self._gone) < self.sources:
            return
        self._writer = TraceWriter(self.output, on_error=self.on_error)
        self.header = self._header()
        self._writer.write(self.header)
        for index, record in self._pending:
            self._out(index, record)
        self._pending.clear()

    def _header(self) -> dict:
        ordered = [self._headers[i] for i in sorted(self._headers)]
        first = ordered[0]
        header = {k: v for k, v in first.items() if k not in PER_TARGET}
        # The earliest clock pair: every target's spans fall after it.
        header["clock"] = min((h["clock"] for h in ordered), key=lambda c: c["monotonic_ns"])
        header["targets"] = [{k: h.get(k) for k in PER_TARGET if k in h} for h in ordered]
        # A single binary and backend stay readable at the top, as in a one-target trace.
        for key in ("binary", "backend", "backend_choice"):
            values = {repr(h.get(key)) for h in ordered}
            if len(values) == 1:
                header[key] = first.get(key)
        header["target"] = {**first["target"], "pids": [h["target"]["pid"] for h in ordered]}
        header["functions"] = sorted({f for h in ordered for f in h.get("functions", [])})
        return header

    def _out(self, index: int, record: dict) -> None:
        if record.get("type") == "span":
            ids = self._id_maps.setdefault(index, {})
            own = record.get("id")
            record["id"] = ids.setdefault(own, next(self._ids)) if own is not None \
                else next(self._ids)
            parent = record.get("parent")
            if parent is not None:
                record["parent"] = ids.setdefault(parent, next(self._ids))
        self._writer.write(record)

    def close(self) -> None:
        """The one end line: the first source's reason, sums of the counts, every source's
        own end in `ends`."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._gone.update(i for i in range(self.sources) if i not in self._headers)
            self._maybe_open()
            if self._writer is None:
                return
            ends = [self._ends.get(i) for i in sorted(self._headers)]
            known = [e for e in ends if e]
            restored = [e.get("code_restored") for e in known]
            self._writer.write({
                "type": "end",
                "reason": known[0]["reason"] if known else "stream-broken",
                "clock": max((e["clock"] for e in known if e.get("clock")),
                             key=lambda c: c["monotonic_ns"], default=None),
                "spans": sum(e.get("spans") or 0 for e in known),
                "unfinished": sum(e.get("unfinished") or 0 for e in known),
                "code_restored": (None if None in restored or len(known) < len(ends)
                                  else all(restored)),
                "ends": ends,
            })
            self._writer.close()


class SourceWriter:
    """What one source's Receiver writes through: a TraceWriter's calls, into the merge."""

    def __init__(self, merged: MergedTrace, index: int) -> None:
        self.merged = merged
        self.index = index

    def write(self, record: dict) -> None:
        self.merged._write(self.index, record)

    def close(self) -> None:
        """The merge closes the file once every source has ended."""
