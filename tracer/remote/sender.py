"""The sending side of a stream (`tracer agent`; the receiving side is receiver.py): trace one
process, write every trace line to stdout.

The session writes its trace file as it always does, into a pipe of the agent's own; a
forwarder thread copies each whole line to standard output, where status and stats lines go
between lines, never inside one. Standard input carries the receiver's start and stop.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from tracer.errors import UserError
from tracer.remote import protocol
from tracer.session.tracefile import TraceWriter

# An agent whose receiver never comes leaves nothing attached, but should not linger in the
# pod forever either.
START_TIMEOUT_S = 300.0
STATS_EVERY_S = 1.0
# What a broken stream is called in the agent's end record and in the receiver's.
STREAM_BROKEN = "stream-broken"
STREAM_CLOSED = "stream-closed"


class Channel:
    """The agent's standard output: whole lines, one writer at a time, each written out at
    once (no buffer between the agent and the stream)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self.broken: OSError | None = None
        self.on_broken: Callable[[], None] = lambda: None

    def send(self, record: dict) -> bool:
        return self.send_line(protocol.encode(record))

    def send_line(self, line: bytes) -> bool:
        with self._lock:
            if self.broken is not None:
                return False
            view = memoryview(line)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as exc:
                self.broken = exc
            else:
                return True
        self.on_broken()
        return False


class Stopper:
    """A stop may come before the session exists (while the binary is read): it is kept and
    handed to the session when there is one."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._request: Callable[[str], None] | None = None
        self._lock = threading.Lock()

    def request(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            request = self._request
        if request is not None:
            request(reason)

    def bind(self, request: Callable[[str], None]) -> None:
        with self._lock:
            self._request = request
            reason = self.reason
        if reason is not None:
            request(reason)


class Control(threading.Thread):
    """Reads the receiver's lines: start (with its versions), stop, and the end of input."""

    def __init__(self, fd: int, stopper: Stopper, on_status: Callable[[str], None]) -> None:
        super().__init__(name="tracer-agent-control", daemon=True)
        self.fd = fd
        self.stopper = stopper
        self.on_status = on_status
        self.started = threading.Event()
        self.theirs: dict | None = None

    def run(self) -> None:
        with os.fdopen(self.fd, "rb") as lines:
            for line in lines:
                record = protocol.decode(line)
                if record is None:
                    self.on_status(f"warning: ignored a line on the agent's input: {line[:80]!r}")
                elif "start" in record:
                    start = record["start"]
                    self.theirs = start if isinstance(start, dict) else {}
                    self.started.set()
                elif "stop" in record:
                    self.stopper.request(str(record["stop"]) or "stop")
        self.stopper.request(STREAM_CLOSED)
        self.started.set()


class Link:
    """The agent's two ends of the stream, taken away from fds 0 and 1 so that nothing else
    (a print, a child process) can write into the stream or read the receiver's lines."""

    def __init__(self) -> None:
        sys.stdout.flush()
        try:
            out_fd = os.dup(sys.stdout.fileno())
            in_fd = os.dup(sys.stdin.fileno())
        except OSError:
            raise UserError("tracer agent reads its standard input and writes its standard "
                            "output: both must be open") from None
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, sys.stdin.fileno())
        os.close(devnull)
        self.channel = Channel(out_fd)
        self.stopper = Stopper()
        self.channel.on_broken = lambda: self.stopper.request(STREAM_BROKEN)
        self.control = Control(in_fd, self.stopper, self.status)
        self.control.start()

    def status(self, message: str) -> None:
        if not self.channel.send({"type": protocol.STATUS, "message": message}):
            print(f"tracer agent: {message}", file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        self.channel.send({"type": protocol.ERROR, "message": message})

    def handshake(self, wait: bool) -> None:
        """Wait for the receiver's start (unless told not to), say hello, and refuse a
        receiver of another version before anything is attached."""
        if wait and not self.control.started.wait(START_TIMEOUT_S):
            raise UserError(f"no start from the local tracer in {START_TIMEOUT_S:.0f} s: "
                            "nothing was traced")
        self.channel.send(protocol.hello(host=socket.gethostname(), pid=os.getpid()))
        theirs = self.control.theirs
        if theirs is not None:
            why = protocol.mismatch(theirs, "local tracer")
            if why:
                raise UserError(f"{why}: nothing was traced")
        if wait and theirs is None:
            raise UserError("the local tracer closed the stream before starting")


class Forwarder(threading.Thread):
    """Copies the session's trace lines from its pipe to the stream (and to a copy file),
    line by line, until the end line or the pipe's end."""

    def __init__(self, read_fd: int, channel: Channel, copy_path: str | None,
                 on_status: Callable[[str], None]) -> None:
        super().__init__(name="tracer-agent-forward", daemon=True)
        self.read_fd = read_fd
        self.on_status = on_status
        self.channel = channel
        self.copy_path = copy_path
        # Opened with the first line, as a local trace file is: a failed attach leaves none.
        self.copy: TraceWriter | None = None
        self.lines = 0

    def run(self) -> None:
        with os.fdopen(self.read_fd, "rb") as pipe:
            for line in pipe:
                # A broken stream still drains the pipe, so the session never blocks on it.
                self.channel.send_line(line)
                self.lines += 1
                record = protocol.decode(line)
                if record is None:
                    continue
                if self.copy_path is not None:
                    self._copy(record)
                if record.get("type") == "end":
                    return

    def _copy(self, record: dict) -> None:
        if self.copy is None:
            try:
                self.copy = TraceWriter(self.copy_path)
            except UserError as exc:
                self.copy_path = None
                self.on_status(f"warning: {exc}; streaming only")
                return
        self.copy.write(record)  # the same encoding: the very line sent


def pick_operator() -> tuple[int, str]:
    """The one process in this PID namespace that is neither the agent, nor one of its
    ancestors, nor running the agent's own Python: in an ephemeral container that targets the
    operator's container, that is the operator. (pid, why)."""
    me = os.getpid()
    skip = {me, *_ancestors(me)}
    own = os.stat("/proc/self/exe")
    candidates: list[tuple[int, str, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        try:
            exe = os.stat(f"/proc/{pid}/exe")
            path = os.readlink(f"/proc/{pid}/exe")
        except PermissionError:
            path = "?"
        except OSError:
            continue  # a kernel thread (no executable) or gone
        else:
            if (exe.st_dev, exe.st_ino) == (own.st_dev, own.st_ino):
                continue
        if _state(pid).startswith("Z"):
            continue
        candidates.append((pid, _comm(pid), path))
    candidates.sort()
    if not candidates:
        raise UserError("no process to trace next to the agent: run it in the operator's PID "
                        "namespace (an ephemeral container with --target), or give the PID")
    if len(candidates) > 1:
        shown = ", ".join(f"{pid} ({name}, {path})" for pid, name, path in candidates[:10])
        more = f" and {len(candidates) - 10} more" if len(candidates) > 10 else ""
        raise UserError(f"several processes could be the operator: {shown}{more}; "
                        "give its PID: tracer agent PID")
    pid, name, path = candidates[0]
    return pid, (f"tracing PID {pid} ({name}, {path}): the only process in this PID namespace "
                 "besides the agent")


def _ancestors(pid: int) -> list[int]:
    found = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # The name in parentheses may hold spaces: the parent comes after its ")".
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        found.append(pid)
    return found


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def send_stats(session, channel: Channel, done: threading.Event) -> None:
    """Once a second, what the receiver's live screen needs and cannot see in the spans:
    calls in flight, hits, and the agent's clock (to map its monotonic times)."""
    while not done.wait(STATS_EVERY_S):
        if session.header is None:
            continue
        writer = session.writer
        channel.send({
            "type": protocol.STATS,
            "monotonic_ns": time.monotonic_ns(),
            "hits": session.pairer.stats.hits,
            "handler_ns": session.handler_ns,
            "in_flight": dict(session.pairer.in_flight),
            "hits_dropped": session.hits_dropped,
            "lines": writer.lines if writer else 0,
        })


def stream_trace(link: Link, target, info, plan, copy: str | None, duration: float | None,
                 backend, budget):
    """Run the session with its trace file being the stream (and `copy`, if given); `backend`
    is the BackendChoice, `budget` the BudgetLimits."""
    from tracer.session.session import Session

    read_fd, write_fd = os.pipe()
    sink = f"/dev/fd/{write_fd}"
    shown = f"the stream and {copy}" if copy else "the stream"

    def on_status(message: str) -> None:
        link.status(message.replace(sink, shown))

    session = Session(target, info, plan, sink, duration, None, on_status, backend=backend,
                      budget=budget)
    forwarder = Forwarder(read_fd, link.channel, copy, link.status)
    forwarder.start()
    done = threading.Event()
    threading.Thread(target=send_stats, args=(session, link.channel, done),
                     name="tracer-agent-stats", daemon=True).start()
    link.stopper.bind(session.request_stop)
    try:
        outcome = session.run()
    finally:
        done.set()
        # The session's writer holds its own descriptor of the pipe until it is collected:
        # the forwarder ends on the end line, or on the pipe's end when nothing was written.
        os.close(write_fd)
        forwarder.join(timeout=10)
        if forwarder.copy is not None:
            forwarder.copy.close()
    outcome.output = copy or "the stream"
    return outcome
