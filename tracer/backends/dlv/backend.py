"""The Delve backend (`--backend dlv`): a headless `dlv attach`, driven by the agent process.

Processes, each started in a session of its own so a Ctrl-C on the tracer's terminal reaches
only the tracer, and each ended by its PID:
- `dlv attach PID --headless --api-version=2 --accept-multiclient=false
  --listen=127.0.0.1:0`, its output to a file in a private folder (never a pipe of the
  tracer: dlv would die with it). Its API has no authentication, so it listens on loopback
  only and, by its default --only-same-user, accepts only connections from the same user;
  without --accept-multiclient it accepts one. (Delve 1.23 and newer could listen on a unix
  socket in the private folder instead; loopback TCP serves every Delve from 1.20 on.)
- the agent (tracer/backends/dlv/client.py), Delve's one client: it arms the plan, runs the
  continue loop, writes hit lines to the pipe read at `hits_fd`, and leaves the operator
  cleanly whenever the tracer goes away, SIGKILL included.

Which dlv: see find_dlv ($TRACER_DLV, then the Delve 1.27.2 scripts/setup builds into the
tracer's cache, then PATH).

`--backend-option values=auto|name|registers` forces how values are read (default auto: by
name when Delve can, else registers); the choice is written in the trace header's notes.
`--backend-option keep-logs=on` keeps Delve's and the agent's logs (the run's private folder,
named in the header's notes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from functools import lru_cache

import psutil

import tracer
from tracer.backends.base import Backend, Setting, settings_of
from tracer.backends.dlv.client import LISTENING
from tracer.binary.model import BinaryInfo
from tracer.errors import UserError
from tracer.probes.plan import Plan
from tracer.targets.process import ptrace_refused

OLDEST_MEASURED = (1, 20)  # the oldest Delve this backend was measured with
# The Delve scripts/setup builds (`go install github.com/go-delve/delve/cmd/dlv@v1.27.2` with
# its Go 1.27) into the tracer's cache: the one the tests measure.
PINNED = "1.27.2"


class AgentGone(Exception):
    """The agent process ended (or stopped answering)."""


def pinned_dlv() -> str:
    """Where scripts/setup puts its Delve: $TRACER_CACHE (default ~/.cache/tracer)/
    dlv-1.27.2/bin/dlv."""
    cache = os.environ.get("TRACER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "tracer")
    return os.path.join(cache, f"dlv-{PINNED}", "bin", "dlv")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_dlv() -> str:
    """Which Delve, in this order: $TRACER_DLV (a path; an error if it is not an executable
    file), the one scripts/setup builds (pinned_dlv), `dlv` on PATH."""
    asked = os.environ.get("TRACER_DLV")
    if asked:
        if _executable(asked):
            return os.path.abspath(asked)
        raise UserError(f"TRACER_DLV={asked} is not an executable file: point it at a dlv "
                        "binary, or unset it to use the one scripts/setup builds")
    pinned = pinned_dlv()
    if _executable(pinned):
        return pinned
    path = shutil.which("dlv")
    if not path:
        raise UserError(f"Delve (dlv) not found: run scripts/setup (it builds Delve {PINNED} "
                        f"into {os.path.dirname(pinned)}), or set TRACER_DLV to a dlv, or use "
                        "--backend gdb")
    return path


@lru_cache(maxsize=4)
def dlv_version(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"Version:\s*v?(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(x) for x in match.groups() if x is not None) if match else None


def _go_minor(version: str | None) -> tuple[int, int] | None:
    match = re.match(r"go(\d+)\.(\d+)", version or "")
    return (int(match[1]), int(match[2])) if match else None


def check_dlv(info: BinaryInfo) -> str:
    """Can Delve trace this binary? UserError (one line) if not; else a note on how values
    will be read. Delve refuses binaries without DWARF. Measured with Delve 1.20.2: `attach`
    to a Go 1.27 binary (DWARF 5) sets breakpoints and reports goroutines but loads no
    argument, so values are read from registers instead. Delve 1.27.2 (Go 1.25 to 1.27 by
    its own check, which the backend turns off) loads the arguments and results of Go 1.19
    and Go 1.27 builds alike."""
    path = find_dlv()
    if info.language != "go":
        raise UserError(f"--backend dlv traces Go programs only and {info.name} is not one: "
                        "use --backend gdb")
    if not info.has_dwarf:
        raise UserError(f"Delve cannot trace {info.name}: it has no DWARF (built with "
                        "-ldflags=\"-s -w\" or stripped); use --backend gdb, which reads Go's "
                        "own function table")
    version = dlv_version(path)
    if version is None:
        raise UserError(f"`{path} version` did not say which Delve it is: run scripts/setup "
                        f"(Delve {PINNED}) or set TRACER_DLV to another dlv")
    shown = ".".join(map(str, version))
    if version[:2] < OLDEST_MEASURED:
        raise UserError(f"Delve {shown} ({path}) is too old (this tracer needs Delve "
                        f"{'.'.join(map(str, OLDEST_MEASURED))} or newer): run scripts/setup "
                        f"(it builds Delve {PINNED}) or use --backend gdb")
    go = _go_minor(info.go_version)
    # Delve 1.N reads the DWARF of Go up to 1.N (MaxSupportedVersionOfGo: 1.20.0 in Delve
    # 1.20.2, 1.27.0 in 1.27.2).
    if go is not None and go > version[:2]:
        return (f"dlv {shown}: {info.go_version} is newer than it can read arguments of "
                f"(Go up to {version[0]}.{version[1]}); values from registers")
    return f"dlv {shown}: values by name on -gcflags=all=-N -l builds, else from registers"


def _attach_error(pid: int, log: str) -> UserError:
    lines = [line for line in log.splitlines() if line.strip()
             and not line.startswith("API server listening")]
    message = lines[-1] if lines else "dlv exited"
    if "operation not permitted" in message.lower():
        return ptrace_refused(pid)
    if "no such process" in message.lower():
        return UserError(f"process {pid} exited before the tracer could attach")
    if "could not open debug info" in message:
        return UserError(f"Delve cannot read the binary of process {pid} (no DWARF): "
                         "use --backend gdb")
    return UserError(f"Delve could not attach to process {pid}: {message.strip()}")


class DlvBackend(Backend):
    name = "dlv"
    notices = ("note: if Delve itself is killed while the operator is busy, the operator dies "
               "of SIGTRAP (its breakpoints outlive it); --backend uprobe cannot harm it that "
               "way, and gdb's breakpoints are repaired in time",)
    environment = ("$TRACER_DLV, else the Delve scripts/setup builds into $TRACER_CACHE "
                   "(default ~/.cache/tracer), else dlv on PATH")
    settings = (
        Setting("values", "auto", "how Delve reads values: by name where it can, else from "
                "registers; or always one way", ("auto", "name", "registers")),
        Setting("keep-logs", "off", "keep Delve's and its client's logs after the run",
                ("off", "on")),
    )

    @classmethod
    def check(cls, info: BinaryInfo) -> str:
        return check_dlv(info)

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.options = settings_of(type(self), settings)
        self.dlv_path = find_dlv()
        self.hits_fd, hits_w = os.pipe()
        self._hits_w: int | None = hits_w
        self.pid: int | None = None
        self.attached = False
        self.exited: dict | None = None
        self.agent: subprocess.Popen | None = None
        self.dlv: subprocess.Popen | None = None
        self.workdir = tempfile.mkdtemp(prefix="tracer-dlv-")  # mode 0700
        self.mode: str | None = None  # "name" or "registers", once armed
        self.delve_addresses: list[int] = []  # every breakpoint address, Delve's own too
        self.connect_info: dict = {}
        self.last_stop = ""  # how the last stop_target stopped it: "hit" or "halt"
        self.last_stop_hits = 0  # breakpoint hits reported by that stop
        self._cond = threading.Condition()
        self._replies: dict[int, dict] = {}
        self._events: list[dict] = []
        self._next_id = 0
        self._agent_done = False
        self._lost = False
        self._marker = 0
        self._extra_notes: list[str] = []
        if self._keep:
            self._extra_notes.append(f"dlv: logs kept in {self.workdir}")

    # -- the agent ---------------------------------------------------------------------------
    def start(self, binary: str | None) -> None:
        """Start the agent now: Delve itself reads the binary only once attached."""
        assert self._hits_w is not None
        stderr = open(os.path.join(self.workdir, "agent.log"), "wb")
        # This very tracer package, whatever the current directory holds.
        root = os.path.dirname(os.path.dirname(os.path.abspath(tracer.__file__)))
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                             if p)}
        try:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "tracer.backends.dlv.client",
                 "--hits-fd", str(self._hits_w), "--workdir", self.workdir,
                 *(["--keep-workdir"] if self._keep else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                pass_fds=(self._hits_w,), start_new_session=True, cwd=self.workdir, env=env)
        finally:
            stderr.close()
        # Only the agent holds the write end now: when it ends, the reader sees EOF.
        os.close(self._hits_w)
        self._hits_w = None
        threading.Thread(target=self._read_agent, name="tracer-dlv-agent",
                         daemon=True).start()

    def _read_agent(self) -> None:
        assert self.agent is not None and self.agent.stdout is not None
        for raw in self.agent.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            with self._cond:
                if "id" in message:
                    self._replies[message["id"]] = message
                else:
                    self._events.append(message)
                self._cond.notify_all()
        with self._cond:
            self._agent_done = True
            self._cond.notify_all()

    def _request(self, op: str, timeout: float = 60, **fields) -> dict:
        if self.agent is None or self.agent.stdin is None:
            raise AgentGone("the Delve agent is not running")
        with self._cond:
            self._next_id += 1
            rid = self._next_id
        try:
            self.agent.stdin.write(json.dumps({"id": rid, "op": op, **fields}).encode() + b"\n")
            self.agent.stdin.flush()
        except (OSError, ValueError):
            raise AgentGone("the Delve agent is gone") from None
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._replies or self._agent_done,
                                       timeout):
                raise AgentGone(f"the Delve agent did not answer {op} in {timeout:g} s")
            reply = self._replies.pop(rid, None)
        if reply is None:
            raise AgentGone(f"the Delve agent ended during {op}")
        if not reply.get("ok"):
            raise RuntimeError(f"dlv agent {op}: {reply.get('error')}")
        return reply

    # -- attaching ---------------------------------------------------------------------------
    def _dlv_log(self) -> str:
        try:
            with open(os.path.join(self.workdir, "dlv.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _start_dlv(self, pid: int) -> int:
        """Start `dlv attach` headless; returns the port it listens on."""
        log = open(os.path.join(self.workdir, "dlv.log"), "wb")
        try:
            self.dlv = subprocess.Popen(
                [self.dlv_path, "attach", str(pid), "--headless", "--api-version=2",
                 "--accept-multiclient=false", "--listen=127.0.0.1:0",
                 "--check-go-version=false", "--only-same-user=true"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        self.pid = pid
        deadline = time.monotonic() + 30
        while True:
            match = LISTENING.search(self._dlv_log().encode())
            if match:
                return int(match[1])
            if self.dlv.poll() is not None:
                raise _attach_error(pid, self._dlv_log())
            if time.monotonic() > deadline:
                raise UserError(f"Delve did not start listening in 30 s (see {self.workdir})")
            time.sleep(0.01)

    def attach(self, pid: int) -> None:
        port = self._start_dlv(pid)
        assert self.dlv is not None
        # Delve prints its address before attaching; the agent's first call returns once
        # it has attached (every thread stopped) and read the binary.
        try:
            self.connect_info = self._request("connect", timeout=125, port=port, pid=pid,
                                              timeout_s=120)
        except (RuntimeError, AgentGone) as exc:
            if self.dlv.poll() is None:
                try:
                    self.dlv.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            if self.dlv.poll() is not None:
                raise _attach_error(pid, self._dlv_log()) from None
            raise UserError(f"could not talk to Delve attached to process {pid}: {exc}") from None
        self.attached = True

    def attach_before_exec(self, pid: int, release: Callable[[], None]) -> float:
        """Delve cannot follow an exec: let the parked process become the program, then
        attach. Calls in the first moments (until the attach) are not traced."""
        try:
            before = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            before = ""
        t0 = time.monotonic()
        release()
        deadline = t0 + 30
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{pid}/exe") != before:
                    break
            except OSError:
                raise UserError("the command exited before the tracer could attach") from None
            time.sleep(0.001)
        else:
            raise UserError("the command did not start in 30 s")
        stopped = time.monotonic()
        self.attach(pid)
        late = (time.monotonic() - t0) * 1000
        self._extra_notes.append(
            f"dlv: attached {late:.0f} ms after the program started (Delve cannot follow an "
            "exec): calls before that are not in this trace")
        return stopped

    # -- arming and running ------------------------------------------------------------------
    def arm(self, plan: Plan, bias: int) -> int:
        try:
            reply = self._request("arm", timeout=120, values=self.options["values"],
                                  plan=plan.to_agent(bias, out_fd=-1))
        except (RuntimeError, AgentGone) as exc:
            raise UserError(f"Delve could not set the breakpoints: {exc}") from None
        self.mode = reply["mode"]
        self.delve_addresses = reply.get("delve_addresses") or []
        for note in [*reply.get("notes", []), *self._extra_notes]:
            if note not in plan.notes:
                plan.notes.append(note)
        return int(reply["armed"])

    def resume(self) -> None:
        self._request("resume")

    def poll(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events:
                    if event.get("event") == "exited" and self.exited is None:
                        self.exited = {"status": event.get("status")}
                        self.attached = False
                    elif event.get("event") == "lost":
                        self._lost = True
                self._events.clear()
                if self.exited is not None:
                    return "target-exited"
                if self._lost or self._agent_done:
                    return "debugger-died"
                if self.dlv is not None and self.dlv.poll() is not None:
                    return "debugger-died"
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def exit_status(self) -> str:
        if not self.exited:
            return ""
        status = self.exited.get("status")
        if status is None:  # killed by a signal: Delve reports only "no such process"
            return "killed (Delve does not report the signal)"
        if status < 0:
            try:
                return f"killed by {signal.Signals(-status).name}"
            except ValueError:
                return f"killed by signal {-status}"
        return f"exit code {status}"

    # -- leaving -----------------------------------------------------------------------------
    def stop_target(self) -> bool:
        """Park the operator at a stop that leaves no signal of Delve's pending: the next
        tracepoint stop, or a halt once no breakpoint byte is left (see the agent)."""
        if not self.attached:
            return False
        try:
            reply = self._request("stop", timeout=30)
        except (AgentGone, RuntimeError):
            return False
        self.last_stop = reply.get("how", "")
        self.last_stop_hits = reply.get("hits_at_stop", 0)
        if reply.get("state") == "exited":
            self.poll(0.5)
            return False
        return bool(reply.get("stopped"))

    def write_marker(self) -> int:
        self._marker += 1
        try:
            self._request("marker", n=self._marker)
        except (AgentGone, RuntimeError):
            pass
        return self._marker

    def detach(self) -> int:
        try:
            reply = self._request("detach", timeout=60)
        except (AgentGone, RuntimeError):
            # The operator exited meanwhile, or Delve failed: the tracer checks the code.
            self.poll(0.2)
            return 0
        if reply.get("state") == "detached":
            self.attached = False
        return int(reply.get("removed", 0))

    def set_capture(self, on: bool) -> None:
        self._request("capture", on=bool(on))

    def cpu_seconds(self) -> float:
        """Delve's and the agent's CPU time so far: what handling the stops has cost."""
        total = 0.0
        for proc in (self.dlv, self.agent):
            if proc is None:
                continue
            try:
                times = psutil.Process(proc.pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def alive(self) -> bool:
        return (self.agent is not None and self.agent.poll() is None and not self._agent_done
                and not self._lost and self.dlv is not None and self.dlv.poll() is None)

    def close(self) -> None:
        """End the agent (which leaves the operator cleanly if still attached), then Delve
        (which exits after the agent's Detach), each by its PID."""
        if self.agent is not None:
            try:
                if self.agent.stdin is not None:
                    self.agent.stdin.close()
            except OSError:
                pass
            _wait_or_kill(self.agent, 30)
        if self.dlv is not None:
            _wait_or_kill(self.dlv, 10, first=signal.SIGINT)
        if self._hits_w is not None:
            try:
                os.close(self._hits_w)
            except OSError:
                pass
            self._hits_w = None
        if not self._keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def _keep(self) -> bool:
        """keep-logs=on: dlv's and the agent's logs stay in the run's folder."""
        return self.options["keep-logs"] == "on"


def _wait_or_kill(proc: subprocess.Popen, timeout: float, first: int | None = None) -> None:
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    for sig, wait in ((first, 5), (signal.SIGKILL, 5)):
        if sig is None:
            continue
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
