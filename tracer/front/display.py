"""What a tracing run shows while it records, for a local session and for a stream received
from an agent alike: a line per call, status messages, the live screen, the closing summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tracer.front.lines import LineFormatter
from tracer.front.live.screen import Cost, Header
from tracer.terminal import echo

# Ways a run ends that the user must hear about in the exit status.
FAILED_REASONS = frozenset(("debugger-died", "write-failed", "pause-budget", "error",
                            "stream-broken", "stop-timeout"))


@dataclass
class Screen:
    """What the live screen reads from a run, each when it redraws."""

    header: Callable[[], Header]
    in_flight: Callable[[], dict[str, int]]
    cost: Callable[[], Cost | None]
    since: Callable[[], int | None]  # the run's start, on the clock of its spans
    offset: Callable[[], int]  # realtime - monotonic of that clock
    now: Callable[[], int] = time.monotonic_ns  # that clock, now


def header_line(header: dict | None, fallback: str = "attaching...") -> tuple[str, str]:
    """(target, binary) as the screen's first line names them, from a trace header."""
    if not header:
        return fallback, ""
    target = f"PID {header['target']['pid']} ({header['target']['name']})"
    where = header.get("k8s") or header.get("via") or {}
    if where.get("pod"):
        target = f"pod {where.get('namespace') or '?'}/{where['pod']} {target}"
    b = header["binary"]
    binary = " ".join(x for x in (b.get("go_version") or b["language"],
                                  "stripped" if b["stripped"] else "") if x)
    return target, binary


def header_clock(header: Callable[[], dict | None]
                 ) -> tuple[Callable[[], int | None], Callable[[], int]]:
    """(since, offset) for a screen, from a run's header once it is written: the run's
    start on the clock of its spans, and realtime - monotonic of that clock."""

    def since() -> int | None:
        h = header()
        return h["clock"]["monotonic_ns"] if h else None

    def offset() -> int:
        h = header()
        return h["clock"]["realtime_ns"] - h["clock"]["monotonic_ns"] if h else 0

    return since, offset


def session_screen(session) -> Screen:
    def header() -> Header:
        target, binary = header_line(session.header)
        return Header(target, binary, session.plan.probe, session.backend_name)

    def cost() -> Cost | None:
        writer = session.writer
        return Cost(session.pairer.stats.hits, session.handler_ns,
                    writer.lines if writer else 0, writer.bytes if writer else 0,
                    (session.header or {}).get("cost_per_hit_ns"))

    return Screen(header, lambda: session.pairer.in_flight, cost,
                  *header_clock(lambda: session.header))


def receiver_screen(receiver) -> Screen:
    """The agent's spans are on its own monotonic clock (another machine's, maybe): the
    screen's `now` is mapped onto it by the offset the receiver measures."""

    def header() -> Header:
        h = receiver.header
        target, binary = header_line(h, "waiting for the agent...")
        return Header(target, binary, h["probe"] if h else "?",
                      f"{h['backend']} via agent" if h else "agent")

    def cost() -> Cost | None:
        stats, writer = receiver.stats, receiver.writer
        return Cost(stats.get("hits", 0), stats.get("handler_ns", 0),
                    writer.lines if writer else 0, writer.bytes if writer else 0,
                    (receiver.header or {}).get("cost_per_hit_ns"))

    return Screen(header, lambda: receiver.stats.get("in_flight", {}), cost,
                  *header_clock(lambda: receiver.header), now=receiver.agent_now)


def multi_screen(run) -> Screen:
    """Several pods' agents into one file (kube/multi.py)."""

    def header() -> Header:
        pods = ", ".join(pod.pod for pod in run.pods)
        h = run.header
        return Header(f"{len(run.pods)} pods: {pods}", "", h["probe"] if h else "?", "agents")

    def cost() -> Cost | None:
        totals, writer = run.totals(), run.writer
        return Cost(totals["hits"], totals["handler_ns"], writer.lines if writer else 0,
                    writer.bytes if writer else 0)

    return Screen(header, run.in_flight, cost, *header_clock(lambda: run.header))


def run_live(run, screen: Screen):
    """`run.run()` under the live screen; its spans go to the screen's state instead of lines."""
    from tracer.front.live.app import LiveView
    from tracer.front.live.state import LiveState

    state = LiveState()
    run.on_span = state.add
    view = LiveView(state, screen.header, screen.in_flight, screen.cost, screen.since,
                    now=screen.now, clock_offset=screen.offset,
                    on_quit=lambda: run.request_stop("quit"))
    with view:
        return run.run()


class Display:
    """Lines per call or the live screen, status messages, and the closing summary."""

    def __init__(self, quiet: bool, plain: bool) -> None:
        self.quiet = quiet
        self.live = not plain and not quiet and sys.stdout.isatty()
        self.messages: list[str] = []  # said while the screen is up: shown once it is gone
        self.run_source = None
        self._formatter: LineFormatter | None = None

    def on_span(self, span: dict) -> None:
        if self.quiet:
            return
        if self._formatter is None:
            # The clock of the run's header: a remote agent's wall clock maps its spans.
            header = getattr(self.run_source, "header", None)
            self._formatter = LineFormatter(header["clock"] if header else None)
        echo(self._formatter.format(span))

    def on_status(self, message: str) -> None:
        if self.live:
            self.messages.append(message)
        else:
            echo(message, err=True)

    def run(self, source, screen: Screen):
        self.run_source = source
        if not self.live:
            return source.run()
        try:
            return run_live(source, screen)
        finally:
            for message in self.messages:
                echo(message, err=True)

    def finish(self, outcome) -> None:
        """The `ended (...)` line; exit status 1 when the run failed."""
        status = f", operator {outcome.target_status}" if outcome.target_status else ""
        unfinished = "?" if outcome.unfinished is None else outcome.unfinished
        echo(f"ended ({outcome.reason}{status}): {outcome.spans} spans, "
                   f"{unfinished} unfinished, written to {outcome.output}", err=True)
        if self.live:
            echo(f"the screen again: tracer view {outcome.output} --summary", err=True)
        if outcome.code_restored is False:
            echo("tracer: error: breakpoint bytes are still in the operator after "
                       "detaching; it will crash on its next call there", err=True)
        if outcome.code_restored is False or outcome.reason in FAILED_REASONS:
            sys.exit(1)
