"""One readable line per finished call, for a terminal or a log."""

from __future__ import annotations

import datetime as dt


def duration(ns: int | None, space: str = " ", digits: int = 2) -> str:
    """A duration for people: µs, ms, s, then minutes."""
    if ns is None:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}{space}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.{digits}f}{space}ms"
    if ns < 120_000_000_000:
        return f"{ns / 1_000_000_000:.{digits}f}{space}s"
    return f"{ns / 60_000_000_000:.0f}{space}min"


def outcome(span: dict) -> str:
    if span.get("status") == "unfinished":
        return "unfinished"
    panic = span.get("panic")
    if panic:
        return f"panic: {panic.get('message') or panic.get('type')}"
    error = span.get("error")
    if error:
        message = error.get("message")
        return f"error {error['type']}" + (f": {message}" if message else "")
    result = span.get("result")
    if result:
        if result.get("requeue_after_ns"):
            return f"requeue after {duration(result['requeue_after_ns'])}"
        if result.get("requeue"):
            return "requeue"
    if "return" in span and span["return"] is not None:
        return f"returned {span['return']}"
    return "ok"


class LineFormatter:
    """Wall-clock times from the header's clock pair, so lines match the operator's logs."""

    def __init__(self, clock: dict | None = None) -> None:
        self.offset = 0 if clock is None else clock["realtime_ns"] - clock["monotonic_ns"]

    def format(self, span: dict) -> str:
        wall = dt.datetime.fromtimestamp((span["start_ns"] + self.offset) / 1e9)
        request = span.get("request")
        if span.get("parent") is not None:
            # A step finishes before its reconcile's line: indented, named by its method.
            what = "  " * span.get("depth", 1) + span["function"].rsplit(".", 1)[-1]
        elif request:
            what = f"{request['namespace']}/{request['name']}"
        elif span.get("args") is not None:
            what = "args " + ",".join(str(a) for a in span["args"])
        else:
            what = span["function"].rsplit("/", 1)[-1]
        worker = (f"g{span['goroutine']}" if span.get("goroutine") is not None
                  else f"t{span.get('thread')}")
        return (f"{wall:%H:%M:%S.%f}  {what:<28} {duration(span.get('duration_ns')):>10}  "
                f"{worker:<6} {outcome(span)}")
