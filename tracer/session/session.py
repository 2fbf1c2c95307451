"""One tracing run: attach, arm, pair hits into spans, record, and leave on every way out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import tracer
from tracer.backends.base import Backend, BackendChoice
from tracer.binary.model import BinaryInfo
from tracer.probes.plan import Plan
from tracer.session.budget import BudgetLimits, PauseBudget
from tracer.session.pairing import Hit, Pairer
from tracer.session.tags import tag_span
from tracer.session.tracefile import SCHEMA_VERSION, TraceWriter, clock_pair
from tracer.targets.process import altered_code, load_bias, restore_code

PARKED_EXEC = (
    "import os, sys; gate = int(sys.argv[1]); os.read(gate, 1); os.close(gate); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def _dead(backend: Backend, wait_s: float = 2.0) -> bool:
    """Whether the debugger is gone (given a moment to be reaped)."""
    deadline = time.monotonic() + wait_s
    while backend.alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except OSError:
        return False


@dataclass
class Target:
    """A process to trace: one already running (pid) or a command to start (argv)."""

    pid: int | None = None
    argv: list[str] | None = None
    name: str = ""
    exe: str | None = None  # the executable's own path, for the header
    output_log: str | None = None  # `run`: the program's stdout/stderr go here, not the screen
    # Where the process runs (e.g. {"k8s": {pod, namespace, container, node, container_id}}):
    # written into the header and into every span.
    tags: dict | None = None


@dataclass
class Outcome:
    reason: str
    spans: int
    unfinished: int
    output: str
    target_status: str = ""
    code_restored: bool | None = None


class Session:
    def __init__(
        self,
        target: Target,
        info: BinaryInfo,
        plan: Plan,
        output: str,
        duration: float | None = None,
        on_span: Callable[[dict], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        *,
        backend: BackendChoice,
        budget: BudgetLimits | None = None,
    ) -> None:
        self.target = target
        self.info = info
        self.plan = plan
        self.output = output
        self.duration = duration
        self.on_span = on_span
        self.on_status = on_status or (lambda message: None)
        self.backend = backend
        self.backend_name = backend.name
        self.budget = budget or BudgetLimits()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._marker_seen = threading.Condition()
        self._markers: set[int] = set()
        self.agent_errors: list[str] = []
        self.child: subprocess.Popen | None = None
        self._leaving = False
        self.handler_ns = 0
        self.hits_dropped = 0
        self.header: dict | None = None
        self.writer: TraceWriter | None = None
        self.pairer = Pairer(plan, self._emit)
        self._on_debugger_death: Callable[[], None] | None = None
        self._repaired: list[int] | None = None
        self._early: list[dict] | None = []
        self._early_lock = threading.Lock()

    # -- signals ---------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def _install_signals(self) -> dict:
        previous = {}

        def handler(signum, _frame):
            self.request_stop(signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
        return previous

    # -- hits --------------------------------------------------------------------------------
    def record(self, line: dict) -> None:
        """Add a line of another source (watch events) to the trace; held back until the
        header is written, as the header must stay the file's first line."""
        with self._early_lock:
            if self._early is not None:
                self._early.append(line)
                return
        self.writer.write(line)

    def _flush_early(self) -> None:
        with self._early_lock:
            early, self._early = self._early or [], None
        for line in early:
            self.writer.write(line)

    def _emit(self, span: dict) -> None:
        tag_span(span, self.target.tags)
        self.writer.write(span)
        if self.on_span is None:
            return
        try:
            self.on_span(span)
        except BrokenPipeError:
            # `tracer ... | head`: whoever read the lines is gone; stop like any Unix tool.
            self.on_span = None
            self.request_stop("output-closed")
        except Exception as exc:  # noqa: BLE001 - the display must never stop the recording
            self.on_span = None
            self.on_status(f"warning: showing calls failed ({exc}); still recording")

    def _read_hits(self, fd: int, pairer: Pairer) -> None:
        points = self.plan.points
        with os.fdopen(fd, "rb") as pipe:
            for raw in pipe:
                try:
                    self._on_record(json.loads(raw), points, pairer)
                except Exception as exc:  # noqa: BLE001 - one bad line must not end the reader
                    self.agent_errors.append(f"reader: {exc!r}")
        # End of the pipe: the debugger is gone. If the tracer did not end it, it died attached and
        # every moment counts before the operator runs into a breakpoint byte.
        if not self._leaving and self._on_debugger_death is not None:
            self._on_debugger_death()

    def _on_record(self, record, points, pairer: Pairer) -> None:
        if isinstance(record, list):
            ts, index, lwp, goid, sp, value, handler_ns = record
            self.handler_ns += handler_ns
            pairer.feed(Hit(ts, points[index], index, lwp, goid, sp, value))
        elif "marker" in record:
            self.hits_dropped = record.get("dropped", 0)
            with self._marker_seen:
                self._markers.add(record["marker"])
                self._marker_seen.notify_all()
        elif "agent_error" in record:
            self.agent_errors.append(record["agent_error"])

    def _wait_marker(self, marker: int, timeout: float) -> bool:
        with self._marker_seen:
            return self._marker_seen.wait_for(lambda: marker in self._markers, timeout)

    # -- the run -----------------------------------------------------------------------------
    def _header(self, pid: int, attach_pause_ms: float | None, armed: int) -> dict:
        info = self.info
        return {
            "type": "header",
            "schema": SCHEMA_VERSION,
            "tracer_version": tracer.__version__,
            "clock": clock_pair(),
            "target": {"pid": pid, "name": self.target.name, "argv": self.target.argv},
            "binary": {
                "path": self.target.exe or info.path,
                "build_id": info.build_id,
                "language": info.language,
                "go_version": info.go_version,
                "stripped": not info.has_symtab,
                "dwarf": info.has_dwarf,
                "pie": info.pie,
            },
            "backend": self.backend_name,
            "backend_choice": self.backend.why,
            "probe": self.plan.probe,
            "probe_file": self.plan.probe_file,
            "steps": self.plan.steps,
            "functions": self.plan.functions,
            "breakpoints": armed,
            "capture_args": self.plan.capture_args,
            "attach_pause_ms": attach_pause_ms,
            "notes": self.plan.notes,
            **(self.target.tags or {}),  # a header has no such keys of its own
        }

    def _spawn_parked(self) -> tuple[subprocess.Popen, Callable[[], None]]:
        """Start the command parked before its exec, so the tracer is in place for its first
        instruction: a small Python waits for one byte on the gate, then becomes the program."""
        assert self.target.argv
        gate_r, gate_w = os.pipe()
        log = None
        if self.target.output_log:
            log = os.open(self.target.output_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        child = subprocess.Popen(
            [sys.executable, "-c", PARKED_EXEC, str(gate_r), *self.target.argv],
            pass_fds=(gate_r,),
            start_new_session=True,
            stdout=log,
            stderr=log,
        )
        os.close(gate_r)
        if log is not None:
            os.close(log)

        def release() -> None:
            os.write(gate_w, b"g")
            os.close(gate_w)

        return child, release

    def run(self) -> Outcome:
        backend = self.backend.create()
        previous = self._install_signals()
        self._reader: threading.Thread | None = None
        self._stop_failed = False
        reason = "error"
        removed = 0
        altered: list[int] | None = None
        pid = bias = None
        self._armed_in: tuple[int, int] | None = None
        try:
            pid, bias = self._attach(backend)
            reason = self._watch(backend)
            reason, removed, altered = self._leave_cleanly(backend, reason, pid, bias)
        finally:
            self._leave(backend, self._reader)
            if pid is None and self._armed_in is not None:
                pid, bias = self._armed_in  # the attach failed after the arming
            if pid is not None and bias is not None and altered is None \
                    and reason not in ("target-exited", "target-exec") and _alive(pid):
                # No detach was confirmed (an exception, a stop that never came): the debugger has
                # been ended, so whatever int3 it left must go now, before a call runs into it.
                altered = self._repair(pid, bias, "the detach did not complete")
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            unfinished = self._close_trace(backend, reason, removed, altered)
            self._end_child()
        return Outcome(reason, self.pairer.stats.spans, unfinished, self.output,
                       self._target_status(backend), None if altered is None else not altered)

    def _attach(self, backend: Backend) -> tuple[int, int]:
        """Attach, arm and resume; the operator is stopped from the attach to the resume."""
        if self.target.argv:
            backend.start(None)
            self.child, release = self._spawn_parked()
            pid = self.child.pid
            t0 = backend.attach_before_exec(pid, release)
        else:
            pid = self.target.pid
            assert pid is not None
            backend.start(self.info.path)
            backend.prepare(self.plan)  # work done before anything stops (cost per hit)
            t0 = time.monotonic()
            backend.attach(pid)
        # A backend that lets the program exec only once armed (kernel uprobes, which stop
        # nothing) has the parker in the process until then: its bias comes after arm().
        late = backend.releases_at_arm
        bias = 0 if late else load_bias(pid, self.info.path, self.info.pie)

        def on_death() -> None:
            self._repaired = self._repair(pid, bias)
            self.request_stop("debugger-died")

        self._on_debugger_death = on_death
        armed = backend.arm(self.plan, bias)
        if late:
            bias = load_bias(pid, self.info.path, self.info.pie)
        # Breakpoints are in: from here on, whatever fails, their bytes must be checked.
        self._armed_in = (pid, bias)
        # The file is created only once the operator is traced: bad input leaves none.
        self.writer = TraceWriter(self.output, on_error=self._write_failed)
        # The header goes first: hits wait in the pipe until the reader starts after it.
        # The pause is counted up to the arming; kernel uprobes never stop the operator.
        pause_ms = (time.monotonic() - t0) * 1000 if backend.stops_to_attach else 0.0
        self.header = self._header(pid, round(pause_ms, 3), armed)
        self.header.update(backend.header_fields())  # e.g. the cost per hit measured at attach
        self.writer.write(self.header)
        self._flush_early()
        self._reader = threading.Thread(target=self._read_hits,
                                        args=(backend.hits_fd, self.pairer),
                                        name="tracer-hits", daemon=True)
        self._reader.start()
        try:
            backend.resume()
        except Exception:
            # The debugger died between the arming and the resume (killed, crashed): the
            # reader repairs the code as the hits' pipe ends, and the watch says so at once.
            if not _dead(backend):
                raise
            return pid, bias
        self.on_status(
            f"tracing {len(self.plan.functions)} function(s) in PID {pid} "
            f"({armed} breakpoints, operator stopped {pause_ms:.1f} ms to attach); "
            f"writing {self.output}; Ctrl-C to detach"
        )
        return pid, bias

    def _watch(self, backend: Backend) -> str:
        """Wait for a way out; returns the reason."""
        deadline = None if self.duration is None else time.monotonic() + self.duration
        limits = self.budget
        budget = None if not limits.max_share else PauseBudget(
            limits.max_share, limits.window_s, backend.cpu_seconds, time.monotonic)
        while True:
            if budget is not None and self._over_budget(budget, backend):
                return "pause-budget"
            end = backend.poll(0.2)
            if end:
                return end
            if self._stop.is_set():
                return self._stop_reason
            if deadline is not None and time.monotonic() >= deadline:
                return "duration"

    def _leave_cleanly(self, backend: Backend, reason: str, pid: int,
                       bias: int) -> tuple[str, int, list[int] | None]:
        """(reason, breakpoints removed, addresses still altered or None if not checked)."""
        if reason == "debugger-died":
            # The reader repairs the code the moment the pipe ends; wait for it.
            assert self._reader is not None
            self._reader.join(timeout=10)
            return reason, 0, self._repaired
        self._leaving = True
        if not backend.stop_target():
            if backend.exited:
                return "target-exited", 0, None
            self._stop_failed = True
            self.on_status("warning: the operator did not stop for the detach")
            return reason, 0, None
        marker = backend.write_marker()
        if not self._wait_marker(marker, 10):
            self.on_status("warning: the agent's last hits did not arrive in 10 s")
        removed = backend.detach()
        if reason == "target-exec":  # a new program: the file's bytes no longer apply
            return reason, removed, None
        try:
            return reason, removed, altered_code(pid, self.info.path,
                                                 self.plan.breakpoint_addresses(0), bias)
        except (OSError, ValueError):
            # It exited between the detach and the check: nothing left to harm.
            return ("target-exited" if not _alive(pid) else reason), removed, None

    def _close_trace(self, backend: Backend, reason: str, removed: int,
                     altered: list[int] | None) -> int:
        """Write calls still open as unfinished and the end line; returns how many."""
        if self.writer is None:
            return 0
        unfinished = self.pairer.close_all()
        extra = backend.end_fields()
        lost = {k: v for k, v in (extra.get("events_lost") or {}).items() if v}
        if lost:  # never silent: the kernel's own counts of events it could not keep
            self.on_status("warning: events were lost, spans may be missing: " +
                           ", ".join(f"{k} {v}" for k, v in lost.items()))
        self.writer.write({
            "type": "end",
            "reason": reason,
            "clock": clock_pair(),
            "target_status": self._target_status(backend) or None,
            "spans": self.pairer.stats.spans,
            "unfinished": len(unfinished),
            "pairing": asdict(self.pairer.stats),
            "agent_errors": len(self.agent_errors),
            "agent_handler_ns": self.handler_ns,
            "hits_dropped": self.hits_dropped,
            "breakpoints_removed": removed,
            "code_restored": None if altered is None else not altered,
            **extra,
        })
        self.writer.close()
        return len(unfinished)

    def _over_budget(self, budget: PauseBudget, backend: Backend) -> bool:
        """Degrade, then detach, when the operator was stopped too long in a window."""
        verdict = budget.check()
        if verdict is None or verdict.action is None:
            return False
        limit = f"{verdict.share:.1%} of the last {budget.window_s:g} s stopped by the tracer " \
                f"(budget {budget.max_share:.1%})"
        assert self.writer is not None
        self.writer.write({"type": "budget", "clock": clock_pair(), "share": verdict.share,
                           "max_share": budget.max_share, "action": verdict.action})
        if verdict.action == "degrade":
            backend.set_capture(False)
            self.on_status(f"warning: {limit}: recording times and types only from now on")
            return False
        self.on_status(f"warning: {limit} again: detaching to spare the operator")
        return True

    def _write_failed(self, exc: OSError) -> None:
        self.on_status(f"error: cannot write the trace file ({exc.strerror}): recording "
                       "stopped, detaching; the file holds what was written before")
        self.request_stop("write-failed")

    def _repair(self, pid: int, bias: int, why: str = "") -> list[int] | None:
        """The debugger is gone without a clean detach (it died, or the detach never came):
        its int3 bytes may still be in the operator, which would die of SIGTRAP on its next
        call there. Put the file's bytes back while it still runs."""
        why = why or f"{self.backend_name} died while attached"
        if not _alive(pid):
            return None
        try:
            left = restore_code(pid, self.info.path, self.plan.breakpoint_addresses(0), bias)
        except (OSError, ValueError) as exc:
            self.on_status(f"warning: {why} and the operator's code could not be repaired: "
                           f"{exc}")
            return None
        self.on_status(f"warning: {why}; the operator's code was repaired" if not left else
                       f"warning: {why}; breakpoints remain in the operator")
        return left

    def _leave(self, backend: Backend, reader: threading.Thread | None) -> None:
        """Whatever happened: detach if still attached, end the debugger, let the reader drain."""
        self._leaving = True
        try:
            # One more try only if the clean way out was never reached (an exception).
            if backend.attached and backend.alive() and not self._stop_failed:
                if backend.stop_target():
                    backend.detach()
        except Exception as exc:  # noqa: BLE001 - leaving must go on whatever failed
            self.on_status(f"warning: detach failed: {exc}")
        backend.close()
        if reader is not None:
            reader.join(timeout=10)

    def _target_status(self, backend: Backend) -> str:
        """How the operator ended; for a program the tracer started and the backend saw
        end without its code (kernel uprobes), the tracer's own wait says."""
        status = backend.exit_status()
        if status in ("", "exited") and self.child is not None \
                and self.child.poll() is not None:
            code = self.child.returncode
            return f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        return status

    def _end_child(self) -> None:
        """A program the tracer started ends with the run, like a shell's foreground job."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
