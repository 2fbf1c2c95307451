"""A client for Delve's headless JSON-RPC server (API v2).

Framing is Go's net/rpc/jsonrpc (JSON-RPC 1.0): one object per line each way,
`{"method": "RPCServer.X", "params": [{...}], "id": n}` out and
`{"id": n, "result": {...}, "error": null | "message"}` back. Delve answers
asynchronous methods (Command, State) out of order, so responses are matched by id.
Several requests may be in flight on the one connection: a `Command continue` and the
`Command halt` that interrupts it, for instance.

Every response is stamped with CLOCK_MONOTONIC as soon as its bytes are received: for a
`continue` that is the moment the tracer learns of a breakpoint hit.
"""

from __future__ import annotations

import json
import select
import socket
import time


class RPCError(Exception):
    """Delve answered with an error."""


class ConnectionLost(Exception):
    """Delve closed the connection (it exited or was killed)."""


class DelveRPC:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self._buf = b""
        self._next_id = 0
        self._responses: dict[int, tuple[int, dict]] = {}
        self.closed = False

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> DelveRPC:
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=2)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    # -- requests ----------------------------------------------------------------------------
    def send(self, method: str, **params) -> int:
        """Send a request; returns its id (see `wait`)."""
        if self.closed:
            raise ConnectionLost("the connection to Delve is closed")
        self._next_id += 1
        data = json.dumps({"method": "RPCServer." + method, "params": [params],
                           "id": self._next_id}, separators=(",", ":"))
        try:
            self.sock.sendall(data.encode() + b"\n")
        except OSError as exc:
            self.closed = True
            raise ConnectionLost(f"Delve's connection failed: {exc}") from None
        return self._next_id

    def call(self, method: str, timeout: float | None = 60.0, **params) -> dict:
        return self.wait(self.send(method, **params), timeout)

    # -- responses ---------------------------------------------------------------------------
    def receive(self, timeout: float | None) -> bool:
        """Read what has arrived (waiting up to `timeout`); False when nothing came."""
        if self.closed:
            raise ConnectionLost("the connection to Delve is closed")
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
            if not ready:
                return False
        try:
            chunk = self.sock.recv(1 << 20)
        except OSError as exc:
            self.closed = True
            raise ConnectionLost(f"Delve's connection failed: {exc}") from None
        ts = time.monotonic_ns()
        if not chunk:
            self.closed = True
            raise ConnectionLost("Delve closed the connection")
        self._buf += chunk
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                break
            line, self._buf = self._buf[:end], self._buf[end + 1:]
            if line.strip():
                message = json.loads(line)
                self._responses[message.get("id")] = (ts, message)
        return True

    def take(self, request_id: int) -> tuple[int, dict] | None:
        """(receive time ns, response) if the response to `request_id` arrived, else None."""
        return self._responses.pop(request_id, None)

    def wait_raw(self, request_id: int, timeout: float | None) -> tuple[int, dict]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self.take(request_id)
            if got is not None:
                return got
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"Delve did not answer request {request_id} in {timeout} s")
            self.receive(left)

    def wait(self, request_id: int, timeout: float | None = 60.0) -> dict:
        _, message = self.wait_raw(request_id, timeout)
        return result_of(message)


def result_of(message: dict) -> dict:
    if message.get("error"):
        raise RPCError(str(message["error"]))
    return message.get("result") or {}
