"""What a backend is to a session: attach, arm a plan, stream hits, leave cleanly.

Hits reach the session as JSON lines on `hits_fd`, whatever the backend:
  [ts_ns, point_index, lwp, goid_or_null, sp, value, handler_ns]   one breakpoint hit
  {"marker": n}                     written after every hit so far, when asked
  {"agent_error": "...", ...}       a hit that could not be decoded
`point_index` indexes `plan.points`; `value` is what the point's decoder captured, in the
shapes of tracer/probes/decoders.py, so spans are the same whichever backend recorded them.

Every ability the session uses is declared here; the optional ones have defaults, which a
backend inherits by subclassing `Backend`. A backend's settings (`--backend-option KEY=VALUE`)
and its notes to the user are declared on its class, so the command line and the session
know no backend by name (tracer/backends/select.py maps the names to the classes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from tracer.binary.model import BinaryInfo
from tracer.errors import UserError
from tracer.probes.plan import Plan


@dataclass(frozen=True)
class Setting:
    """One `--backend-option KEY=VALUE` a backend takes."""

    key: str
    default: str
    help: str
    choices: tuple[str, ...] = ()  # empty: a whole number >= 1

    def check(self, value: str, backend: str) -> str:
        if self.choices:
            if value not in self.choices:
                raise UserError(f"--backend-option {self.key}={value}: {backend} takes "
                                f"{self.key}={'|'.join(self.choices)}")
        elif not value.isdigit() or int(value) < 1:
            raise UserError(f"--backend-option {self.key}={value}: give a whole number")
        return value

    def describe(self) -> str:
        values = "|".join(self.choices) if self.choices else "N"
        return f"{self.key}={values} ({self.help}; default {self.default})"


class Backend(Protocol):
    name: ClassVar[str]
    # Said to the user once before a run with this backend (what it can do to the operator).
    notices: ClassVar[tuple[str, ...]] = ()
    # The --backend-option keys it takes; its constructor gets every one, defaults filled in.
    settings: ClassVar[tuple[Setting, ...]] = ()
    # The environment variables it reads (where its debugger is installed), for --help.
    environment: ClassVar[str] = ""
    # False for a backend that never stops the operator to attach (the pause is then 0).
    stops_to_attach: ClassVar[bool] = True
    # True when a program the tracer starts may exec only once armed (kernel uprobes, which
    # stop nothing, leave the parker in the process until then): its load bias comes after
    # arm().
    releases_at_arm: bool = False

    hits_fd: int  # read end; reaches EOF when the backend's debugger is gone
    attached: bool
    exited: dict | None  # set when the operator exited

    @classmethod
    def check(cls, info: BinaryInfo) -> str:
        """Before anything is attached: can this backend trace this binary here? UserError
        if not; else what the header's backend_choice should add ("" for nothing)."""
        return ""

    def start(self, binary: str | None) -> None:
        """Start the debugger with the program's file; whatever it reads of it, now, before
        anything stops."""

    def prepare(self, plan: Plan) -> None:
        """Work done before an attach to a running process, while nothing is stopped (e.g.
        measure the cost of one hit). Nothing by default."""

    def attach(self, pid: int) -> None:
        """Attach and stop every thread. UserError with a clear message on failure."""

    def attach_before_exec(self, pid: int, release: Callable[[], None]) -> float:
        """Attach to a process parked before exec, call release(), stop after the exec;
        returns when (time.monotonic) the program was stopped, for the attach pause."""

    def arm(self, plan: Plan, bias: int) -> int:
        """Set every point of the plan (addresses + bias); returns how many were set."""

    def header_fields(self) -> dict:
        """More fields for the trace header (e.g. the cost per hit measured at attach)."""
        return {}

    def resume(self) -> None: ...

    def poll(self, timeout: float) -> str | None:
        """"target-exited" or "debugger-died" when that happened, else None."""

    def exit_status(self) -> str: ...

    def stop_target(self) -> bool:
        """Stop every thread for leaving; False if the operator or the debugger is gone."""

    def write_marker(self) -> int:
        """Have {"marker": n} written after every hit so far; returns n."""

    def detach(self) -> int:
        """Remove every breakpoint and detach, leaving the operator running; returns how
        many breakpoints were removed."""

    def end_fields(self) -> dict:
        """More fields for the trace's end line; `events_lost` ({kind: count}) is also said
        to the user when any count is not 0."""
        return {}

    def set_capture(self, on: bool) -> None:
        """Turn optional decoding (names, error messages) on or off while running."""

    def cpu_seconds(self) -> float:
        """The pause budget's measure of the operator's time held by the tracer so far: the
        debugger's CPU time (it works only while a thread is stopped for it), or for uprobes
        the hits times their measured cost."""

    def alive(self) -> bool:
        """The debugger still answers (so a detach can still be tried)."""

    def close(self) -> None:
        """End the debugger process; only after detaching."""


def settings_of(kind: type[Backend], given: Mapping[str, str] | None) -> dict[str, str]:
    """Every setting of `kind`, the given ones checked, the others at their defaults."""
    known = {s.key: s for s in kind.settings}
    values = {s.key: s.default for s in kind.settings}
    for key, value in (given or {}).items():
        if key not in known:
            takes = ", ".join(known) or "no option"
            raise UserError(f"--backend-option {key}: the {kind.name} backend takes {takes}")
        values[key] = known[key].check(value, kind.name)
    return values


@dataclass(frozen=True)
class BackendChoice:
    """The backend a run uses: its class, its settings, and why (the header's
    backend_choice)."""

    kind: type[Backend]
    why: str = ""
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def notices(self) -> tuple[str, ...]:
        return self.kind.notices

    def create(self) -> Backend:
        return self.kind(settings_of(self.kind, self.settings))
