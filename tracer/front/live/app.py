"""The live view on a terminal: rich's Live screen, refreshed a few times a second, and keys.

The screen runs on rich's refresh thread and a key-reading thread; the tracer's own threads
only update LiveState, so a slow terminal drops frames, never events.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable

from rich.console import Console
from rich.live import Live

from tracer.front.live.screen import SORTS, Cost, Header, render
from tracer.front.live.state import LiveState, Snapshot
from tracer.terminal import text as visible_text

REFRESH_PER_SECOND = 4


class LiveView:
    def __init__(
        self,
        state: LiveState,
        header: Callable[[], Header],
        in_flight: Callable[[], dict[str, int]],
        cost: Callable[[], Cost | None],
        since: Callable[[], int | None],
        now: Callable[[], int] = time.monotonic_ns,
        clock_offset: Callable[[], int] = lambda: 0,
        on_quit: Callable[[], None] | None = None,
        console: Console | None = None,
    ) -> None:
        self.state = state
        self.header = header
        self.in_flight = in_flight
        self.cost = cost
        self.since = since
        self.now = now
        self.clock_offset = clock_offset
        self.on_quit = on_quit
        self.console = console or Console()
        self.sort = SORTS[0]
        self.frozen: Snapshot | None = None
        self._stop = threading.Event()
        self.live: Live | None = None

    def snapshot(self) -> Snapshot:
        return self.state.snapshot(self.now(), self.in_flight(), self.since())

    def renderable(self):
        try:
            snap = self.frozen or self.snapshot()
            size = self.console.size
            return render(snap, self.header(), self.cost(), size.width, size.height,
                          self.sort, frozen=self.frozen is not None,
                          clock_offset=self.clock_offset())
        except Exception as exc:  # noqa: BLE001 - an exception would end rich's refresh thread
            return visible_text(f"the screen could not be drawn ({type(exc).__name__}: {exc}); "
                                "still recording")

    def key(self, char: str) -> None:
        if char in ("q", "Q"):
            if self.on_quit:
                self.on_quit()
            self._stop.set()
        elif char in ("p", "P"):
            self.frozen = None if self.frozen else self.snapshot()
        elif char in ("s", "S"):
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        if self.live is not None:
            self.live.refresh()

    def _read_keys(self) -> None:
        fd = sys.stdin.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                data = os.read(fd, 32)
                if not data:
                    return
                for char in data.decode(errors="ignore"):
                    self.key(char)

    def __enter__(self) -> LiveView:
        self._saved = None
        if sys.stdin.isatty():
            # cbreak keeps ISIG: Ctrl-C still reaches the tracer as SIGINT and detaches.
            self._saved = termios.tcgetattr(sys.stdin.fileno())
            tty.setcbreak(sys.stdin.fileno())
            threading.Thread(target=self._read_keys, name="tracer-keys", daemon=True).start()
        self.live = Live(get_renderable=self.renderable, console=self.console,
                         refresh_per_second=REFRESH_PER_SECOND, screen=True,
                         redirect_stderr=False, redirect_stdout=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.live is not None:
            self.live.__exit__(*exc)
        if self._saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)
