"""The local end of an agent's stream: records it as a trace file, as if attached locally.

A stream is anything with `read_line()` (one line with its newline; b"" at the end),
`write(bytes)` and `close()`: the pipes of a local `tracer agent` process (PipeStream,
ProcessStream) or a Kubernetes attach stream adapted to the same three calls.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import BinaryIO, Protocol

from tracer.errors import UserError
from tracer.remote import protocol
from tracer.remote.sender import STREAM_BROKEN
from tracer.session.session import Outcome
from tracer.session.tags import tag_span
from tracer.session.tracefile import TraceWriter

HELLO_TIMEOUT_S = 120.0  # the agent reads nothing heavy before its hello
STOP_TIMEOUT_S = 30.0  # its detach: the last hits (10 s at most), the detach, the code check


class Stream(Protocol):
    def read_line(self) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class PipeStream:
    """A pair of byte streams: the agent's standard output to read, its input to write."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self.reader = reader
        self.writer = writer

    def read_line(self) -> bytes:
        return self.reader.readline()

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        self.writer.flush()

    def close(self) -> None:
        # The end of its input stops an agent still running. The reading side belongs to
        # whoever made the pipes (a thread may still be reading it).
        try:
            self.writer.close()
        except OSError:
            pass


class ProcessStream(PipeStream):
    """A command that runs `tracer agent` somewhere (ssh, kubectl exec -i, or here) and
    speaks its protocol on its standard input and output; its stderr is kept for messages."""

    def __init__(self, argv: list[str]) -> None:
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise UserError(f"cannot run {argv[0]}: {exc.strerror}") from None
        assert self.proc.stdout and self.proc.stdin and self.proc.stderr
        super().__init__(self.proc.stdout, self.proc.stdin)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_reader = threading.Thread(target=self._read_stderr,
                                               name="tracer-agent-stderr", daemon=True)
        self._stderr_reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    def describe(self) -> str:
        # Said when the stream ended: give the command a moment to finish saying why.
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        self._stderr_reader.join(1)
        tail = "; ".join(line for line in self.stderr_tail if line)
        return f" (its stderr: {tail})" if tail else ""

    def close(self) -> None:
        super().close()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Receiver:
    """Reads the agent's lines on a thread of its own, writes the trace file, and answers
    the same calls as a local Session (run, request_stop, header, on_span, writer)."""

    def __init__(
        self,
        stream: Stream,
        output: str,
        via: dict | None = None,
        tags: dict | None = None,
        duration: float | None = None,
        on_span: Callable[[dict], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        hello_timeout: float = HELLO_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        open_writer: Callable[..., TraceWriter] = TraceWriter,
        on_header: Callable[[dict], None] | None = None,
    ) -> None:
        self.stream = stream
        # Called with the header before it is written (what starts on it sees every line).
        self.on_header = on_header
        # `tracer attach -l` writes several receivers into one file (tracer/remote/merge.py).
        self.open_writer = open_writer
        self.output = output
        self.via = via or {}
        self.tags = tags or {}
        self.duration = duration
        self.on_span = on_span
        self.on_status = on_status or (lambda message: None)
        self.hello_timeout = hello_timeout
        self.stop_timeout = stop_timeout
        self.hello: dict | None = None
        self.header: dict | None = None
        self.end: dict | None = None
        self.writer: TraceWriter | None = None
        self.stats: dict = {}
        self.spans = 0
        self.lines = 0
        self.bytes = 0  # of the whole lines read
        self.cut_bytes = 0
        self.agent_error: str | None = None
        self.read_error: str | None = None
        self._offset: int | None = None  # agent monotonic - ours, from its stats lines
        self._stop = threading.Event()
        self._stop_reason = ""
        self._hello_seen = threading.Event()
        self._done = threading.Event()
        self._early: list[dict] = []
        self._record_lock = threading.Lock()

    # -- what the screen reads ---------------------------------------------------------------
    def agent_now(self) -> int:
        return time.monotonic_ns() + (self._offset or 0)

    def record(self, line: dict) -> None:
        """A line of this side's own (a watch event) into the trace, once its header is out."""
        with self._record_lock:
            if self.header is None:
                self._early.append(line)
                return
        self.writer.write(line)

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    # -- the reading thread ------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                line = self.stream.read_line()
                if not line:
                    return
                if not line.endswith(b"\n"):
                    self.cut_bytes = len(line)  # cut inside a line: whole lines only
                    return
                self.lines += 1
                self.bytes += len(line)
                self._on_line(line)
                if self.end is not None:
                    return
        except Exception as exc:  # noqa: BLE001 - a failing stream ends the run, recorded
            self.read_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._done.set()
            self._hello_seen.set()

    def _on_line(self, line: bytes) -> None:
        record = protocol.decode(line)
        if record is None:
            text = line.decode(errors="replace").strip()
            if text:
                self.on_status(f"agent output: {text[:200]}")
            return
        kind = record.get("type")
        if kind == protocol.HELLO:
            self.hello = record
            self._hello_seen.set()
        elif kind == protocol.STATUS:
            self.on_status(f"agent: {record.get('message')}")
        elif kind == protocol.STATS:
            self._on_stats(record)
        elif kind == protocol.ERROR:
            self.agent_error = str(record.get("message"))
        elif kind == "header":
            self._on_header(record)
        elif self.writer is not None:
            self._record(record, kind)

    def _on_stats(self, record: dict) -> None:
        self.stats = record
        sent = record.get("monotonic_ns")
        if isinstance(sent, int):
            # Sent before it arrived: the largest difference is the closest to the clocks'.
            offset = sent - time.monotonic_ns()
            self._offset = offset if self._offset is None else max(self._offset, offset)

    def _on_header(self, header: dict) -> None:
        agent = {key: self.hello.get(key) for key in ("host", "pid", "tracer_version")} \
            if self.hello else {}
        header["via"] = {**self.via, "agent": agent}
        tag_span(header, self.tags)
        if self._offset is None:
            self._offset = header["clock"]["monotonic_ns"] - time.monotonic_ns()
        if self.on_header is not None:
            try:
                self.on_header(header)
            except Exception as exc:  # noqa: BLE001 - the trace goes on without it
                self.on_status(f"warning: {exc}")
        self.writer = self.open_writer(self.output, on_error=self._write_failed)
        self.writer.write(header)
        with self._record_lock:
            self.header = header
            early, self._early = self._early, []
        for line in early:
            self.writer.write(line)

    def _record(self, record: dict, kind: str | None) -> None:
        assert self.writer is not None
        if kind == "span":
            self.spans += 1
            tag_span(record, self.tags)
        elif kind == "end":
            record["stream"] = self._stream_facts("complete")
            self.end = record
        self.writer.write(record)
        if kind == "span" and self.on_span is not None:
            try:
                self.on_span(record)
            except BrokenPipeError:
                self.on_span = None
                self.request_stop("output-closed")
            except Exception as exc:  # noqa: BLE001 - the display never stops the recording
                self.on_span = None
                self.on_status(f"warning: showing calls failed ({exc}); still recording")

    def _write_failed(self, exc: OSError) -> None:
        self.on_status(f"error: cannot write the trace file ({exc.strerror}): recording "
                       "stopped; the agent detaches; the file holds what was written before")
        self.request_stop("write-failed")

    def _stream_facts(self, state: str) -> dict:
        return {"state": state, "lines": self.lines, "bytes": self.bytes,
                "cut_bytes": self.cut_bytes, "error": self.read_error}

    # -- the run -----------------------------------------------------------------------------
    def _send(self, record: dict) -> bool:
        try:
            self.stream.write(protocol.encode(record))
            return True
        except (OSError, ValueError):  # closed, or the agent is gone
            return False

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, _frame):
            self.request_stop(signal.Signals(signum).name)

        return {sig: signal.signal(sig, handler)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def run(self) -> Outcome:
        previous = self._install_signals()
        reader = threading.Thread(target=self._read, name="tracer-receiver", daemon=True)
        reason = ""
        try:
            self._send(protocol.start())
            reader.start()
            self._wait_hello()
            reason = self._watch()
            if not self._done.is_set():
                self._send(protocol.stop(reason))
                if not self._done.wait(self.stop_timeout):
                    self.on_status(f"warning: the agent's end did not come in "
                                   f"{self.stop_timeout:.0f} s of asking it to stop")
                    reason = "stop-timeout"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if reader.is_alive() or not self._done.is_set():
                self._send(protocol.stop(reason or "error"))
            self.stream.close()
            reader.join(timeout=5)
        return self._finish(reason)

    def _wait_hello(self) -> None:
        deadline = time.monotonic() + self.hello_timeout
        while not self._hello_seen.wait(0.2):
            if self._stop.is_set() or time.monotonic() > deadline:
                why = "stopped" if self._stop.is_set() else \
                    f"no word from the agent in {self.hello_timeout:.0f} s"
                raise UserError(f"{why} before the agent said hello{self._describe()}")
        if self.hello is None:
            raise UserError(self.agent_error and f"agent: {self.agent_error}" or
                            f"the agent's stream ended before its hello{self._describe()}")
        why = protocol.mismatch(self.hello, "agent")
        if why:
            raise UserError(f"{why}: run the agent image of tracer "
                            f"{protocol.versions()['tracer_version']} (--agent-image)")

    def _watch(self) -> str:
        """Wait for the end of the stream, a stop, or the duration (counted from the header,
        when the operator is traced); returns the reason to give the agent."""
        deadline = None
        while not self._done.wait(0.2):
            if self._stop.is_set():
                return self._stop_reason
            if deadline is None and self.duration is not None and self.header is not None:
                deadline = time.monotonic() + self.duration
            if deadline is not None and time.monotonic() >= deadline:
                return "duration"
        return ""

    def _describe(self) -> str:
        describe = getattr(self.stream, "describe", None)
        return describe() if describe else ""

    def _finish(self, reason: str) -> Outcome:
        if self.header is None or self.writer is None:
            # Nothing was traced: no file, like a local attach that failed.
            if self.agent_error:
                raise UserError(f"agent: {self.agent_error}")
            raise UserError(f"the agent ended before tracing ({reason or 'its stream ended'})"
                            f"{self._describe()}")
        end = self.end
        if end is None:
            end = self._broken_end(reason)
            self.writer.write(end)
        self.writer.close()
        return Outcome(end["reason"], self.spans, end.get("unfinished"), self.output,
                       end.get("target_status") or "", end.get("code_restored"))

    def _broken_end(self, reason: str) -> dict:
        """The stream ended with no end line from the agent: say so, on the agent's clock."""
        header_clock = self.header["clock"] if self.header else {}
        mono = self.agent_now()
        real = mono + header_clock.get("realtime_ns", 0) - header_clock.get("monotonic_ns", 0)
        why = "stop-timeout" if reason == "stop-timeout" else STREAM_BROKEN
        cut = f", a cut line of {self.cut_bytes} bytes dropped" if self.cut_bytes else ""
        asked = getattr(self.stream, "why_ended", None)
        said = asked() if asked and why == STREAM_BROKEN else None
        gone = said is not None and said[1]
        if gone:
            # Not a fault of the stream: the operator ended, and its agent with it.
            self.on_status(f"{said[0]}: the operator ended, and the agent with it; nothing is "
                           f"left to restore ({self.lines} lines received{cut})")
        else:
            known = f" ({said[0]})" if said else ""
            self.on_status(f"warning: the agent's stream ended without its end line after "
                           f"{self.lines} lines{cut}{known}: calls in flight and whether the "
                           f"operator's code was restored are unknown here{self._describe()}")
        return {
            "type": "end",
            "reason": "target-exited" if gone else why,
            "clock": {"monotonic_ns": mono, "realtime_ns": real},
            "target_status": None,
            "spans": self.spans,
            "unfinished": None,
            "code_restored": None,
            "stream": self._stream_facts("broken" if why == STREAM_BROKEN else why),
            "agent_error": self.agent_error,
        }
