"""Hostile input for the tracer: names and messages as an adversary would choose them, and
trace files written by hand, damaged the ways the issue lists."""

from __future__ import annotations

import json
from pathlib import Path

# OSC 0 (window title), OSC 52 (clipboard write), OSC 8 (a link), CSI (clear screen, red),
# a bare CR, a newline that forges a line, C1 CSI, a right-to-left override, and rich markup
# (a link, a style, and `[/]`, which closes a tag that was never opened).
TITLE = "\x1b]0;PWNED-TITLE\x07"
CLIPBOARD = "\x1b]52;c;cHduZWQ=\x07"
LINK = "\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07"
CLEAR = "\x1b[2J\x1b[H\x1b[31m"
FORGED = "\ntracer: error: FORGED LINE"
MARKUP = "[link=http://evil.example/]m[/link][bold red]b[/] [/]"
SHORT_MARKUP = "[/][bold red]b[/]"
HOSTILE_NAME = f"obj{TITLE}{CLIPBOARD}{LINK}{CLEAR}\rX{FORGED}\x9b31m\u202e{MARKUP}"
HOSTILE_MESSAGE = f"failed {TITLE}{CLIPBOARD}{CLEAR}\r{FORGED} {MARKUP}"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\r", "\u202e")

FUNCTION = "example.com/op/controllers.(*SampleReconciler).Reconcile"
MONO0 = 5_000_000_000
REAL0 = 1_700_000_000_000_000_000


def header(**extra) -> dict:
    h = {"type": "header", "schema": 1, "tracer_version": "0.1.0",
         "clock": {"monotonic_ns": MONO0, "realtime_ns": REAL0},
         "target": {"pid": 4242, "name": "op" + TITLE, "argv": None},
         "binary": {"path": "/bin/op" + CLEAR, "build_id": None, "language": "go",
                    "go_version": "go1.27.3", "stripped": False, "dwarf": True, "pie": False},
         "backend": "gdb", "probe": "controller-runtime", "functions": [FUNCTION],
         "breakpoints": 2, "capture_args": True, "attach_pause_ms": 1.0, "notes": []}
    h.update(extra)
    return h


def span(i: int, start: int, took: int | None = 1_000_000, name: str = "obj",
         namespace: str = "ns", error: str | None = None, **extra) -> dict:
    s = {"type": "span", "id": i, "function": FUNCTION, "start_ns": MONO0 + start,
         "end_ns": None if took is None else MONO0 + start + took,
         "duration_ns": took, "status": "ok" if took is not None else "unfinished",
         "goroutine": 30 + i % 4, "thread": None,
         "request": {"namespace": namespace, "name": name},
         "result": {"requeue": False, "requeue_after_ns": 0},
         "error": {"type": "*errors.errorString", "message": error} if error else None,
         "panic": None}
    s.update(extra)
    return s


def end(at: int, **extra) -> dict:
    e = {"type": "end", "reason": "quit", "clock": {"monotonic_ns": MONO0 + at,
                                                     "realtime_ns": REAL0 + at},
         "spans": 0, "code_restored": True}
    e.update(extra)
    return e


def write_lines(path: Path, records: list, raw: list[str] | None = None) -> Path:
    """JSON lines (dicts), then raw lines as given (damage written by hand)."""
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in records]
    path.write_text("\n".join(lines + (raw or [])) + "\n")
    return path


def hostile_trace(path: Path, calls: int = 40) -> Path:
    """A well-formed trace whose names, messages, process name and paths are hostile."""
    records: list = [header()]
    for i in range(calls):
        if i % 2:
            records.append(span(i, i * 10_000_000, 2_000_000 + i * 1000, name=HOSTILE_NAME,
                                namespace="ns" + CLEAR, error=HOSTILE_MESSAGE if i % 3 else None))
        else:  # short enough to be shown whole in every table
            records.append(span(i, i * 10_000_000, 1_000_000, name=SHORT_MARKUP,
                                namespace="ns"))
    records.append(end(calls * 10_000_000 + 5_000_000))
    return write_lines(path, records)


def inert(text: str) -> bool:
    """No raw control character of the hostile set, no forged line start."""
    return not any(c in text for c in RAW_CONTROLS) and not any(
        line.startswith("tracer: error: FORGED") for line in text.splitlines())
