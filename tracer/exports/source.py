"""Reading a trace file for an export: checked up front, then spans streamed one by one.

Exports of large traces (a million spans is a 400 MB file) should not hold every span as a
dict at once, so the file is read as a stream; the header is read and checked first, so a
foreign or empty file is refused before any output is created.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tracer.errors import UserError
from tracer.session.tracefile import Damage, check_readable, iter_valid, parse_header


@dataclass
class TraceStream:
    path: str
    header: dict
    end: dict | None = None  # set once spans() has run to the end
    truncated: bool = False  # the file ends mid-line (the run did not end cleanly)
    last_ns: int = 0  # the latest monotonic time seen in any span
    damage: Damage = field(default_factory=Damage)  # lines left out by the last pass

    @property
    def clock_offset(self) -> int:
        """Add to a CLOCK_MONOTONIC span time to get wall-clock (CLOCK_REALTIME) ns."""
        clock = self.header.get("clock") or {}
        return int(clock.get("realtime_ns", 0)) - int(clock.get("monotonic_ns", 0))

    @property
    def start_ns(self) -> int | None:
        """Monotonic ns of the attach (None in a header with no clock)."""
        clock = self.header.get("clock") or {}
        return clock.get("monotonic_ns")

    def end_ns(self) -> int:
        """When the run ended (monotonic ns): the end line's clock, else the last time seen.

        Unfinished spans are drawn up to here. Valid after spans() has been consumed."""
        clock = (self.end or {}).get("clock") or {}
        return max(int(clock.get("monotonic_ns", 0)), self.last_ns)

    def spans(self) -> Iterator[dict]:
        """Every usable span line, in file order (the order calls finished). Lines that are
        not well-formed records, and spans whose times are damaged, are left out and counted
        in `damage` (reset at each pass)."""
        self.damage = Damage()
        try:
            for record, cut, _number in iter_valid(self.path, self.damage):
                if cut:
                    self.truncated = True
                    return
                kind = record.get("type")
                if kind == "span":
                    self.last_ns = max(self.last_ns, record["start_ns"], record.get("end_ns") or 0)
                    yield record
                elif kind == "end":
                    self.end = record
        except OSError as exc:
            raise UserError(f"cannot read {self.path}: {exc.strerror}") from None


def open_trace(path: str) -> TraceStream:
    return TraceStream(path, parse_header(path, check_readable(path)))
