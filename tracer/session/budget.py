"""The pause budget: the operator must not spend more than a share of its time stopped.

Every breakpoint hit stops the operator's thread while gdb handles it, and gdb works only
while some thread is stopped for it, so gdb's CPU time over a window is what the tracer cost
the operator in that window (a lower bound: scheduling delays come on top). Over budget once:
drop optional decoding; over budget again: detach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

NORMAL, DEGRADED = "normal", "degraded"


@dataclass(frozen=True)
class BudgetLimits:
    """--max-stopped and --budget-window: the share of a window the operator may spend
    stopped by the tracer (0 or None: no budget), and that window."""

    max_share: float | None = 0.05
    window_s: float = 10.0


@dataclass
class BudgetVerdict:
    share: float
    action: str | None  # None, "degrade" or "detach"


class PauseBudget:
    def __init__(self, max_share: float, window_s: float, cpu_seconds: Callable[[], float],
                 clock: Callable[[], float]) -> None:
        self.max_share = max_share
        self.window_s = window_s
        self.cpu_seconds = cpu_seconds
        self.clock = clock
        self.state = NORMAL
        self._start = clock()
        self._cpu0 = cpu_seconds()

    def check(self) -> BudgetVerdict | None:
        """At the end of each window, the share it cost and what to do; None between."""
        now = self.clock()
        if now - self._start < self.window_s:
            return None
        cpu = self.cpu_seconds()
        share = (cpu - self._cpu0) / (now - self._start)
        self._start, self._cpu0 = now, cpu
        if share <= self.max_share:
            return BudgetVerdict(share, None)
        if self.state == NORMAL:
            self.state = DEGRADED
            return BudgetVerdict(share, "degrade")
        return BudgetVerdict(share, "detach")
