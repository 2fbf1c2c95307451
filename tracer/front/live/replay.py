"""`tracer view FILE`: a recorded trace in the live screen, replayed or as its end state."""

from __future__ import annotations

import bisect
import sys
import threading
import time

from rich.console import Console

from tracer.errors import UserError
from tracer.front.live.app import LiveView
from tracer.front.live.screen import Header, render
from tracer.front.live.state import LiveState
from tracer.session.tracefile import Trace, read_trace
from tracer.terminal import text as visible_text


def header_of(trace: Trace) -> Header:
    h = trace.header or {}
    target = h.get("target") or {}
    b = h.get("binary") or {}
    binary = " ".join(x for x in (b.get("go_version") or b.get("language"),
                                  "stripped" if b.get("stripped") else "") if x)
    return Header(f"PID {target.get('pid')} ({target.get('name')})", binary,
                  h.get("probe", "?"), h.get("backend", "?"))


def _end_ns(trace: Trace) -> int:
    ends = [s["end_ns"] for s in trace.spans if s.get("end_ns") is not None]
    if trace.end and trace.end.get("clock"):
        ends.append(trace.end["clock"]["monotonic_ns"])
    return max(ends) if ends else trace.header["clock"]["monotonic_ns"]


class Replay:
    """Feeds spans to the state as a virtual clock passes their end, and counts the calls
    in flight at that clock from their starts."""

    def __init__(self, trace: Trace, speed: float) -> None:
        self.trace = trace
        self.speed = speed
        self.state = LiveState()
        self.origin = trace.header["clock"]["monotonic_ns"]
        self.end = _end_ns(trace)
        self.by_end = sorted(trace.spans, key=lambda s: s.get("end_ns") or self.end)
        self.wall0 = time.monotonic_ns()
        self.done = threading.Event()
        # Per function, sorted starts and ends: calls in flight at t = starts <= t - ends <= t.
        self.bounds: dict[str, tuple[list[int], list[int]]] = {}
        for span in trace.spans:
            starts, ends = self.bounds.setdefault(span["function"], ([], []))
            starts.append(span["start_ns"])
            ends.append(span.get("end_ns") or self.end)
        for starts, ends in self.bounds.values():
            starts.sort()
            ends.sort()

    def now(self) -> int:
        virtual = self.origin + int((time.monotonic_ns() - self.wall0) * self.speed)
        return min(virtual, self.end)

    def flight(self) -> dict[str, int]:
        now = self.now()
        return {name: bisect.bisect_right(starts, now) - bisect.bisect_right(ends, now)
                for name, (starts, ends) in self.bounds.items()}

    def feed(self, stop: threading.Event) -> None:
        for span in self.by_end:
            end = span.get("end_ns") or self.end
            while self.now() < end and not stop.is_set():
                time.sleep(min(0.05, (end - self.now()) / self.speed / 1e9 + 0.001))
            if stop.is_set():
                return
            self.state.add(span)
        self.done.set()


def view(path: str, speed: float, summary: bool, console: Console | None = None) -> None:
    trace = read_trace(path)
    console = console or Console()
    if "clock" not in trace.header:
        raise UserError(f"{path}: its header has no clock pair: the spans cannot be replayed")
    if trace.damage:
        console.print(visible_text(f"warning: {trace.damage.message(path)}", "yellow"),
                      highlight=False)
    if trace.truncated:
        console.print(visible_text(f"warning: {path} is cut; showing it up to its last whole "
                                   "line", "yellow"), highlight=False)
    clock = trace.header["clock"]
    offset = clock["realtime_ns"] - clock["monotonic_ns"]
    if summary:
        state = LiveState()
        for span in trace.spans:
            state.add(span)
        snap = state.snapshot(_end_ns(trace), {}, clock["monotonic_ns"])
        size = console.size
        console.print(render(snap, header_of(trace), None, size.width, max(size.height, 40),
                             clock_offset=offset, keys=False))
        return
    if not sys.stdout.isatty():
        raise UserError("tracer view replays on a terminal: use --summary to print the end "
                        "state here")
    replay = Replay(trace, speed)
    stop = threading.Event()
    live = LiveView(replay.state, lambda: header_of(trace), replay.flight, lambda: None,
                    lambda: replay.origin, now=replay.now, clock_offset=lambda: offset,
                    on_quit=stop.set, console=console)
    feeder = threading.Thread(target=replay.feed, args=(stop,), daemon=True)
    with live:
        feeder.start()
        # The end state stays on screen until q or Ctrl-C.
        try:
            live.wait()
        except KeyboardInterrupt:
            pass
        stop.set()
