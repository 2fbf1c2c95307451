"""A GDB/MI connection for control only: start gdb, send commands, read records.

pygdbmi parses the records; the pipe is driven here with non-blocking reads, because
pygdbmi's own controller waits 0.2 s per call and nothing per hit ever goes through MI.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass, field

from pygdbmi import gdbmiparser


def mi_quote(text: str) -> str:
    """An MI C string: quotes, backslashes and control characters escaped, everything else
    (UTF-8 included) as it is. JSON's escaping is not MI's: gdb reads `\\u00fc` as `u00fc`."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


class MIError(Exception):
    """gdb answered ^error, timed out, or went away."""


@dataclass
class MIResult:
    message: str
    payload: dict | None
    console: list[str] = field(default_factory=list)


class MIConnection:
    def __init__(self, gdb_path: str, pass_fds: tuple[int, ...] = ()) -> None:
        # Its own session: a Ctrl-C on the user's terminal must reach the tracer, which then
        # detaches in order, and never gdb, which would stop the operator.
        self.proc = subprocess.Popen(
            [gdb_path, "--interpreter=mi3", "-nx", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        self._buf = b""
        self._token = 100
        self.async_records: list[dict] = []
        self.closed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_lines(self, timeout: float) -> list[str]:
        ready, _, _ = select.select([self._out], [], [], max(timeout, 0))
        if not ready:
            return []
        try:
            chunk = os.read(self._out, 65536)
        except BlockingIOError:
            return []
        if not chunk:
            self.closed = True
            return []
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def _records(self, timeout: float) -> list[dict]:
        out = []
        for line in self._read_lines(timeout):
            if not line or line == "(gdb) ":
                continue
            out.append(gdbmiparser.parse_response(line))
        return out

    def send(self, command: str, timeout: float = 30.0) -> MIResult:
        """Send one MI command and wait for its result record."""
        if self.closed:
            raise MIError("gdb has exited")
        self._token += 1
        token = self._token
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{token}{command}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.closed = True
            raise MIError("gdb has exited") from exc
        console: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MIError(f"gdb did not answer {command.split()[0]} within {timeout:.0f} s")
            for record in self._records(min(remaining, 0.5)):
                kind = record.get("type")
                if kind == "result" and record.get("token") == token:
                    if record["message"] == "error":
                        msg = (record.get("payload") or {}).get("msg", "unknown error")
                        raise MIError(msg)
                    return MIResult(record["message"], record.get("payload"), console)
                if kind == "console" and record.get("payload"):
                    console.append(record["payload"])
                elif kind in ("notify", "result"):
                    self.async_records.append(record)
            if self.closed:
                raise MIError("gdb exited while running " + command.split()[0])

    def console(self, command: str, timeout: float = 30.0) -> MIResult:
        """A CLI command through MI, quoted as an MI C string so no name or path the user
        or the binary supplied can break out of it."""
        return self.send("-interpreter-exec console " + mi_quote(command), timeout)

    def poll(self, timeout: float) -> list[dict]:
        """Asynchronous records (stops, exits) that arrived, waiting at most timeout."""
        for record in self._records(timeout):
            if record.get("type") in ("notify", "result"):
                self.async_records.append(record)
        records, self.async_records = self.async_records, []
        return records

    def wait_for(self, predicate, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        pending: list[dict] = []
        found = None
        while found is None and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for record in self.poll(min(remaining, 0.2)):
                if found is None and predicate(record):
                    found = record
                else:
                    pending.append(record)
        self.async_records = pending + self.async_records
        return found

    def close(self, timeout: float = 5.0) -> None:
        """Ask gdb to exit; only after a detach. Ends it by its PID if it does not."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"-gdb-exit\n")
                self.proc.stdin.flush()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.closed = True
