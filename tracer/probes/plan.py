"""A plan: probes compiled against one binary, the input every backend takes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

# Roles of a point. entry/exit bracket a call; panic and recovery let a Go call that panicked
# be closed when the runtime has recovered it (no RET ever runs for it).
ENTRY = "entry"
EXIT = "exit"
PANIC = "panic"
RECOVERY = "recovery"

# How a hit is keyed: Go calls by goroutine id (never by OS thread: goroutines migrate),
# native calls by OS thread.
KEY_GOID = "goid"
KEY_GOID_FROM_ARG = "goid-rax"
KEY_THREAD = "thread"
# Rust async: the future's address (points and pairing by tracer.probes.rust_async and the
# async pairer; the synchronous pairer hands such hits over).
KEY_FUTURE = "future"
# Rust async roles (key "future"): a poll of the future starts, a poll returns, the future is
# dropped. Their decoders are "rust-poll..." (tracer.probes.rust_async; gdb's hit handler).
POLL = "poll"
POLL_EXIT = "poll-exit"
DROP = "drop"

# What a point's function is to the trace (see tracer.probes.spec): a reconcile of its own,
# a step (child span) of the reconcile open on the same key, or an end marker of it.
SPAN_RECONCILE = "reconcile"
SPAN_STEP = "step"
SPAN_END = "end"


@dataclass(frozen=True)
class Point:
    addr: int  # static address in the file; the backend adds the load bias
    function: str
    role: str
    key: str
    decode: str | None  # a decoder of tracer.probes.decoders (or rust_async's "rust-poll...")
    span: str = SPAN_RECONCILE


@dataclass
class Plan:
    binary: str
    language: str
    probe: str
    functions: list[str]
    points: list[Point]
    pie: bool = False
    go_goid_offset: int | None = None
    go_types_base: int | None = None
    # Kernel uprobes: where an error's known fields are read (tracer.probes.decoders).
    go_error_slots: list[tuple[int, str]] = field(default_factory=list)
    capture_args: bool = True
    probe_file: str | None = None  # the probe file the plan was compiled from, if any
    choice: str | None = None  # why this probe, when the tracer chose it
    # Functions of each span role, for the header (steps: child spans of reconciles).
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Rust async: per function, how to read Ready/Ok/Err from the bytes a poll returned
    # (tracer.probes.rust_dwarf.poll_layout; read by tracer.session.async_pairing).
    rust_results: dict[str, dict] = field(default_factory=dict)
    # Rust async: per function, how the agent reads the object (namespace, name) from a
    # future at its first poll (tracer.probes.rust_dwarf.request_layout).
    rust_requests: dict[str, dict] = field(default_factory=dict)

    def to_agent(self, bias: int, out_fd: int) -> dict:
        return {
            "tracer_root": str(Path(__file__).resolve().parent.parent),
            "out_fd": out_fd,
            "bias": bias,
            "capture_args": self.capture_args,
            "go": {
                "goid_offset": self.go_goid_offset,
                "types_base": None if self.go_types_base is None else self.go_types_base + bias,
            },
            "points": [asdict(p) for p in self.points],
            "rust_requests": self.rust_requests,
            "rust_results": self.rust_results,
        }

    def breakpoint_addresses(self, bias: int) -> list[int]:
        return sorted({p.addr + bias for p in self.points})
