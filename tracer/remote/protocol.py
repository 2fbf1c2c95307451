"""The agent's line protocol: one JSON object per line, in both directions.

Agent to receiver (its standard output), in this order:
- `{"type": "hello", ...}` first: the agent's tracer version, trace schema and protocol;
- then the trace file's own lines (header, span, budget, ..., end), unchanged;
- mixed in: `{"type": "status", "message": ...}` for the person watching,
  `{"type": "stats", ...}` (once a second: calls in flight, hits, the agent's clock) and at
  most one `{"type": "error", "message": ...}` when the agent refuses to trace.

Receiver to agent (its standard input): `{"start": {...}}` (the receiver's versions; the agent
waits for it before attaching, so nothing it says is lost to a stream opened late) and
`{"stop": "reason"}`. End of input stops the agent as well.
"""

from __future__ import annotations

import json

import tracer
from tracer.session.tracefile import SCHEMA_VERSION

PROTOCOL_VERSION = 1

# Agent lines that are about the stream, not the trace: never written to the trace file.
HELLO, STATUS, STATS, ERROR = "hello", "status", "stats", "error"
CONTROL_TYPES = frozenset((HELLO, STATUS, STATS, ERROR))


def encode(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict | None:
    """The object on a line, or None when the line is not a JSON object."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def versions() -> dict:
    return {"tracer_version": tracer.__version__, "schema": SCHEMA_VERSION,
            "protocol": PROTOCOL_VERSION}


def hello(**extra) -> dict:
    return {"type": HELLO, **versions(), **extra}


def start() -> dict:
    return {"start": versions()}


def stop(reason: str) -> dict:
    return {"stop": reason}


def mismatch(theirs: dict, side: str) -> str | None:
    """Why `theirs` (the other end's versions) cannot work with this tracer, or None.

    Versions must be equal: the trace records the agent writes are stored as this tracer's,
    and a stream that changed shape between versions would be misread silently."""
    mine = versions()
    if all(theirs.get(key) == mine[key] for key in mine):
        return None
    return (f"the {side} runs tracer {theirs.get('tracer_version')} (trace schema "
            f"{theirs.get('schema')}, protocol {theirs.get('protocol')}), this tracer is "
            f"{mine['tracer_version']} (schema {mine['schema']}, protocol {mine['protocol']})")
