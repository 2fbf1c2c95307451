"""The gdb backend: MI for control (attach, arm, health, detach), the agent for every hit."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from tracer.backends.base import Backend, Setting, settings_of
from tracer.backends.gdb import calibrate
from tracer.backends.gdb.mi import MIConnection, MIError, mi_quote
from tracer.binary.model import BinaryInfo
from tracer.errors import UserError
from tracer.probes.plan import ENTRY, POLL, Plan
from tracer.targets.process import file_bytes, ptrace_refused

HIT_HANDLER = Path(__file__).with_name("hit_handler.py")

# Settings applied before anything is attached. Signals pass through silently so the operator
# sees exactly what it would see untraced (Go's SIGURG preemption among them).
SETTINGS = [
    "set confirm off",
    "set pagination off",
    "set auto-load off",
    "set startup-with-shell off",
    "set print thread-events off",
    "set print inferior-events off",
    "set detach-on-fork on",
    "set follow-fork-mode parent",
    # gdb needs no symbols: breakpoints go at addresses and the agent reads registers and
    # memory. Every symbol it reads at the attach is read with the operator stopped
    # (libc's, which gdb reads for thread debugging even with auto-solib-add off, and a
    # separate debug file of libc6-dbg: 50 to 85 ms on this machine).
    "set auto-solib-add off",
    "set debug-file-directory",
    "handle all nostop noprint pass",
    "handle SIGINT nostop noprint pass",
    # gdb stops threads with SIGSTOP (attach, interrupt); one that arrives late must never
    # reach the operator, or its whole process is put in a job-control stop.
    "handle SIGSTOP nostop noprint nopass",
]

F_SETPIPE_SZ = 1031
EXIT_REASONS = {"exited-normally", "exited", "exited-signalled"}


@dataclass
class DetachReport:
    hits: int
    agent_errors: int
    removed_breakpoints: int
    attach_pause_ms: float | None = None


def find_gdb() -> str:
    path = shutil.which("gdb")
    if not path:
        raise UserError("gdb is not installed: install it (Debian/Ubuntu: apt-get install gdb)")
    return path


def _attach_error(pid: int, message: str) -> UserError:
    if "Operation not permitted" in message:
        return ptrace_refused(pid)
    if "No such process" in message:
        return UserError(f"process {pid} exited before the tracer could attach")
    return UserError(f"gdb could not attach to process {pid}: {message}")


def _shadow_stack(pid: int | None) -> bool:
    """Whether the process runs with x86 user shadow stacks (CET) enabled."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("x86_Thread_features:") and "shstk" in line
                       for line in f)
    except OSError:
        return False


class GdbBackend(Backend):
    name = "gdb"
    settings = (
        # gdb's frame API instead of one PTRACE_GETREGS per hit: slower, kept for comparison
        # and as the fallback the agent also takes by itself.
        Setting("registers", "ptrace", "how the agent reads a hit's registers: one "
                "PTRACE_GETREGS, or gdb's frame API", ("ptrace", "frame")),
        # One stop per hit: the agent carries out the instruction under the breakpoint (a
        # push, `sub rsp`, a RET) instead of gdb stepping over it, a second stop.
        Setting("one-stop", "on", "the agent carries out the instruction under the "
                "breakpoint: one stop per hit instead of two", ("on", "off")),
    )

    @classmethod
    def check(cls, info: BinaryInfo) -> str:
        find_gdb()
        return ""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.options = settings_of(type(self), settings)
        self.gdb_path = find_gdb()
        self.hits_fd, self._hits_w = os.pipe()
        try:
            # A larger pipe rides out a tracer that is slow for a moment; the agent drops
            # (and counts) hits rather than wait when it is full.
            fcntl.fcntl(self._hits_w, F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        self.mi: MIConnection | None = None
        self.pid: int | None = None
        self.attached = False
        self.running = False
        self.exited: dict | None = None
        self.exec_seen: dict | None = None
        self._plan_file: str | None = None
        self._marker = 0
        self.binary: str | None = None
        self.cost: tuple[int | None, str] = (None, "not measured (tracer run)")

    # -- start-up ---------------------------------------------------------------------------
    def start(self, binary: str | None) -> None:
        self.binary = binary
        self.mi = MIConnection(self.gdb_path, pass_fds=(self._hits_w,))
        # Only gdb holds the write end now: when gdb dies the reader sees EOF.
        os.close(self._hits_w)
        self.mi.send("-gdb-set mi-async on")
        # Non-stop: a hit stops only its own thread, and an interrupt stops threads with
        # SIGSTOP, which ptrace always sees. All-stop interrupts by sending SIGINT to the
        # operator's process group, which a program in sigwait() takes for itself.
        self.mi.send("-gdb-set non-stop on")
        for setting in SETTINGS:
            self.mi.console(setting)
        if binary:
            # The program only, no symbols: with the exec file known gdb reads none at the
            # attach either (its symbols, DWARF included, were 100 to 130 ms of the pause on
            # a 100 MB Go binary even when read ahead; 10 ms to stop every thread without).
            self.mi.send("-file-exec-file " + mi_quote(binary), timeout=60)
        self.mi.console("source " + str(HIT_HANDLER))

    def prepare(self, plan: Plan) -> None:
        """Before the attach: the cost of one hit, measured on a process of the tracer's."""
        assert self.mi is not None
        self._calibrate(plan)

    def _calibrate(self, plan: Plan) -> None:
        """The cost of one hit, measured on a process of the tracer's (gdb/calibrate.py)."""
        entry = next((p for p in plan.points if p.role in (ENTRY, POLL)), None)
        if entry is None or not self.binary:
            return
        try:
            code = file_bytes(self.binary, entry.addr, 16)
        except (OSError, ValueError):
            return
        self.cost = calibrate.measure(plan, code, lambda: type(self)(self.options))

    def header_fields(self) -> dict:
        """For the trace header: what a hit costs the operator, and how that was measured."""
        ns, how = self.cost
        return {"cost_per_hit_ns": ns, "cost_measured": how}

    def attach(self, pid: int) -> None:
        assert self.mi is not None
        try:
            self.mi.send(f"-target-attach {pid}", timeout=60)
        except MIError as exc:
            raise _attach_error(pid, str(exc)) from None
        self.pid = pid
        self.attached = True
        # Non-stop attach reports threads one by one; arming and resuming before the last
        # has stopped would leave it stopped for good, and a Go runtime stalls behind it.
        if not self._wait_threads("stopped", 10):
            raise UserError(f"gdb attached to process {pid} but could not stop all its threads")

    def attach_before_exec(self, pid: int, release) -> float:
        """Attach to a process parked before exec (tracer run), let it exec, and stop at the
        new program's first instruction so nothing it does escapes the trace."""
        self.attach(pid)
        assert self.mi is not None
        self.mi.console("catch exec")
        self.resume()
        release()
        stop = self.mi.wait_for(
            lambda r: r.get("message") == "stopped"
            and (r.get("payload") or {}).get("reason") in ("exec", *EXIT_REASONS),
            timeout=60,
        )
        if stop is None or stop["payload"]["reason"] != "exec":
            raise UserError("the command did not start under the tracer (it exited or hung "
                            "before its exec)")
        stopped = time.monotonic()
        self.running = False
        self.mi.console("delete")
        return stopped

    # -- arming -----------------------------------------------------------------------------
    def arm(self, plan: Plan, bias: int) -> int:
        assert self.mi is not None
        fd, self._plan_file = tempfile.mkstemp(prefix="tracer-plan-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            # gdb inherited the pipe's write end under the same number.
            agent_plan = plan.to_agent(bias, out_fd=self._hits_w)
            agent_plan["registers"] = self.options["registers"]
            # Never one stop with a shadow stack, which a RET done by hand would leave out
            # of step.
            agent_plan["one_stop"] = (self.options["one-stop"] == "on"
                                      and not _shadow_stack(self.pid))
            json.dump(agent_plan, f)
        result = self.mi.console(f"python tracer_arm({json.dumps(self._plan_file)})")
        armed = [line for line in result.console if line.startswith("tracer-armed")]
        if not armed:
            raise UserError("gdb's hit handler did not arm: " + " ".join(result.console).strip())
        # After an exec the plan's addresses mean nothing, yet gdb would put its breakpoints
        # back at them in the new program: stop there instead, and leave.
        self.mi.console("catch exec")
        return int(armed[0].split()[1])

    def resume(self) -> None:
        assert self.mi is not None
        self.mi.send("-exec-continue --all")
        self.running = True

    def _threads(self) -> list[dict]:
        assert self.mi is not None
        return (self.mi.send("-thread-info").payload or {}).get("threads", [])

    def _wait_threads(self, state: str, timeout: float) -> bool:
        """Wait until gdb reports every thread in `state` ("stopped" or "running")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            threads = self._threads()
            if threads and all(t.get("state") == state for t in threads):
                return True
            # Short waits: the operator stays stopped until every thread is seen stopped.
            if self.exited is not None or self.poll(0.002) == "target-exited":
                return False
        return False

    # -- while running ----------------------------------------------------------------------
    def poll(self, timeout: float) -> str | None:
        """An end reason when the operator exited or gdb died, else None."""
        assert self.mi is not None
        records = self.mi.poll(timeout)
        if any(r.get("message") == "thread-group-exited" for r in records):
            # Its exit code or signal comes with the *stopped record, which may follow in
            # the next read: give it a moment rather than report a killed operator as 0.
            records += self.mi.poll(0.3)
        for record in records:
            payload = record.get("payload") or {}
            message = record.get("message")
            if message == "stopped" and payload.get("reason") == "exec":
                self.exec_seen = payload
            elif message == "stopped" and payload.get("reason") in EXIT_REASONS:
                self.exited = payload
                self.attached = self.running = False
            elif message == "thread-group-exited" and self.exited is None:
                self.exited = payload
                self.attached = self.running = False
        if self.exited is not None:
            return "target-exited"
        if self.exec_seen is not None:
            return "target-exec"
        if self.mi.closed or self.mi.proc.poll() is not None:
            return "debugger-died"
        return None

    def exit_status(self) -> str:
        if not self.exited:
            return ""
        if "signal-name" in self.exited:
            return f"killed by {self.exited['signal-name']}"
        if "exit-code" not in self.exited and self.exited.get("reason") != "exited-normally":
            return "exited"
        return f"exit code {int(self.exited.get('exit-code', '0'), 8)}"

    # -- leaving ----------------------------------------------------------------------------
    def stop_target(self) -> bool:
        """Stop every thread so breakpoints can be removed; False if the operator is gone."""
        assert self.mi is not None
        if not self.attached or self.mi.closed:
            return False
        try:
            self.mi.send("-exec-interrupt --all", timeout=10)
            if self._wait_threads("stopped", 10):
                self.running = False
                return True
        except MIError:
            pass
        return False

    def write_marker(self) -> int:
        """Ask the agent to write a marker after every hit so far; returns its number."""
        assert self.mi is not None
        self._marker += 1
        self.mi.console(f"python tracer_marker({self._marker})")
        return self._marker

    def detach(self) -> int:
        """Remove every breakpoint and detach; returns how many breakpoints were removed."""
        assert self.mi is not None
        removed = 0
        result = self.mi.console("python tracer_disarm()")
        for line in result.console:
            if line.startswith("tracer-disarmed"):
                removed = int(line.split()[1])
        # A thread that stopped at a breakpoint before gdb's SIGSTOP reached it still has that
        # SIGSTOP pending, and gdb's detach answers it with a SIGCONT the operator would see.
        # One more round with no breakpoints left lets every thread take its SIGSTOP.
        self.resume()
        if not self.stop_target():
            return removed
        self.mi.send("-target-detach", timeout=30)
        self.attached = False
        return removed

    def set_capture(self, on: bool) -> None:
        assert self.mi is not None
        self.mi.console(f"python tracer_capture({bool(on)})")

    def cpu_seconds(self) -> float:
        """gdb's CPU time so far: what handling the operator's stops has cost."""
        assert self.mi is not None
        try:
            times = psutil.Process(self.mi.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    def alive(self) -> bool:
        return self.mi is not None and not self.mi.closed and self.mi.proc.poll() is None

    def close(self) -> None:
        if self.mi is not None:
            self.mi.close()
        if self._plan_file:
            try:
                os.unlink(self._plan_file)
            except OSError:
                pass
            self._plan_file = None

