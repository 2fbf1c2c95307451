"""The live screen: rich renderables built from a Snapshot, sized to the terminal."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from tracer.front.lines import duration, outcome
from tracer.front.live.state import ObjectStats, Snapshot
from tracer.terminal import safe_table, visible

SORTS = ["recent", "calls", "time", "name"]


def dur(ns: int | None) -> str:
    """Durations in table cells: narrow."""
    return duration(ns, space="", digits=1)


def short_function(name: str) -> str:
    """`pkg/path/controllers.(*R).Reconcile` → `(*R).Reconcile`: the part a person reads."""
    last = name.rsplit("/", 1)[-1]
    return last.split(".", 1)[1] if "." in last and "(" in last else last


@dataclass
class Header:
    target: str
    binary: str
    probe: str
    backend: str


@dataclass
class Cost:
    hits: int
    handler_ns: int
    lines: int
    bytes: int
    per_hit_ns: int | None = None  # measured at attach (the header's cost_per_hit_ns)


def sort_objects(objects: list[ObjectStats], mode: str) -> list[ObjectStats]:
    if mode == "calls":
        return sorted(objects, key=lambda o: (-o.calls, o.key))
    if mode == "time":
        return sorted(objects, key=lambda o: (-o.total_ns, o.key))
    if mode == "name":
        return sorted(objects, key=lambda o: o.key)
    return sorted(objects, key=lambda o: -o.last_start)


def _corrected_p50(snap: Snapshot, per_hit_ns: int) -> str:
    """The busiest function's p50, raw and with the tracer's share out: one hit per call
    (half its entry's, half its return's) and two per step called inside it, on average."""
    if not snap.functions:
        return ""
    name, fn = max(snap.functions.items(), key=lambda item: item[1].calls)
    p50 = fn.percentile(0.5)
    if p50 is None:
        return ""
    steps = sum(st.calls for st in snap.steps if st.parent_function == name)
    hits = 1 + 2 * steps / max(1, fn.calls)
    return f"; p50 {dur(p50)}, {dur(max(0, int(p50 - hits * per_hit_ns)))} corrected"


def render(snap: Snapshot, header: Header, cost: Cost | None, width: int, height: int,
           sort: str = "recent", frozen: bool = False, clock_offset: int = 0,
           keys: bool = True) -> Group:
    elapsed = snap.now - snap.since if snap.since is not None else 0
    top = Text()
    top.append("tracer ", style="bold cyan")
    top.append(visible(f"{header.target}  "), style="bold")
    top.append(visible(f"{header.binary}  probe {header.probe}  {header.backend}  "
                       f"up {dur(elapsed)}"))
    if frozen:
        top.append("  [frozen: p to resume]", style="bold yellow")

    functions = safe_table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, padding=(0, 1),
                      show_edge=False)
    functions.add_column("function", ratio=3, no_wrap=True, overflow="ellipsis",
                         min_width=min(40, max(16, width - 62)))
    for column in ("calls", "run", "/min", "p50", "p95", "max", "err", "rq", "last"):
        functions.add_column(column, justify="right", no_wrap=True)
    for name, fn in sorted(snap.functions.items()):
        since_last = dur(snap.now - fn.last_start) if fn.last_start else "-"
        functions.add_row(
            short_function(name), str(fn.calls), str(snap.in_flight.get(name, 0)),
            str(len(fn.recent_starts)) if elapsed >= 60e9
            else f"{len(fn.recent_starts) * 60e9 / max(elapsed, 1):.0f}",
            dur(fn.percentile(0.5)), dur(fn.percentile(0.95)),
            dur(fn.max_ns),
            str(fn.errors), str(fn.requeues), since_last,
        )

    steps = _steps_table(snap, width)
    step_names = {st.function for st in snap.steps}
    in_flight = sum(n for name, n in snap.in_flight.items() if name not in step_names)
    busy = min(snap.busy_ns, elapsed) if elapsed else 0
    idle_share = 1 - busy / elapsed if elapsed else 1.0
    streak = snap.now - snap.last_end if in_flight == 0 and snap.last_end else 0
    idle = Text()
    idle.append("idle ", style="bold")
    idle.append(f"{idle_share:.1%} of the time attached; ")
    idle.append(f"current idle streak {dur(streak)}" if in_flight == 0 else
                f"{in_flight} in flight now")

    footer = Text(style="dim")
    if cost is not None and cost.per_hit_ns:
        stopped = cost.hits * cost.per_hit_ns
        attached = max(1, snap.now - (snap.since or snap.now))
        footer.append(f"cost: {cost.hits} hits x {cost.per_hit_ns / 1000:.1f}µs = "
                      f"{dur(stopped)} stopped ({stopped / attached:.1%})"
                      f"{_corrected_p50(snap, cost.per_hit_ns)}; {cost.bytes / 1024:.0f} KiB")
    elif cost is not None:
        per_hit = cost.handler_ns / cost.hits if cost.hits else 0
        footer.append(f"cost: {cost.hits} hits, agent {dur(cost.handler_ns)} "
                      f"({per_hit / 1000:.0f}µs/hit); trace {cost.lines} lines "
                      f"{cost.bytes / 1024:.0f} KiB")
    if keys:
        footer.append("  q quit p freeze s sort", style="bold")

    last_error = Text(no_wrap=True, overflow="ellipsis")
    if snap.errors:
        err = snap.errors[-1]
        request = err.get("request")
        what = f"{request['namespace']}/{request['name']} " if request else ""
        last_error.append("last error ", style="bold red")
        last_error.append(visible(f"{dur(snap.now - err['start_ns'])} ago: {what}{outcome(err)}"))
    else:
        last_error.append("no errors", style="bold green")

    # Rows left for the two lists at the bottom once the fixed parts are placed: the header
    # and footer may wrap, each table has a header and a rule.
    fixed = (len(top) // width + 1) + (2 + len(snap.functions)) + 1 + 3 + 2 \
        + (len(footer) // width + 1) + (steps.row_count + 2 if steps is not None else 0)
    room = max(height - fixed, 2)
    tail_rows = max(1, min(len(snap.tail), room // 3))
    object_rows = max(1, room - tail_rows)

    objects = safe_table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, padding=(0, 1),
                    show_edge=False, title=f"{len(snap.objects)} objects, by {sort} (s)",
                    title_justify="left", title_style="bold")
    objects.add_column("object", ratio=3, no_wrap=True, overflow="ellipsis")
    objects.add_column("calls", justify="right", no_wrap=True)
    objects.add_column("last start", justify="right", no_wrap=True)
    objects.add_column("took", justify="right", no_wrap=True)
    objects.add_column("result", ratio=2, no_wrap=True, overflow="ellipsis")
    if width >= 100:
        objects.add_column("interval", justify="right", no_wrap=True)
    for obj in sort_objects(snap.objects, sort)[:object_rows]:
        when = dt.datetime.fromtimestamp((obj.last_start + clock_offset) / 1e9)
        row = [obj.key, str(obj.calls), f"{when:%H:%M:%S.%f}"[:-3], dur(obj.last_duration),
               obj.last_result]
        if width >= 100:
            row.append(dur(obj.interval))
        objects.add_row(*row, style="red" if obj.last_result not in ("ok", "") and
                        not obj.last_result.startswith("requeue") else None)

    tail = safe_table(box=None, expand=True, pad_edge=False, padding=(0, 1), show_header=False)
    tail.add_column(no_wrap=True)
    tail.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    recent = sorted(snap.tail[-tail_rows:], key=lambda s: s["start_ns"])
    for span in recent:
        request = span.get("request")
        what = f"{request['namespace']}/{request['name']}" if request else \
            short_function(span["function"])
        bad = span.get("error") or span.get("panic")
        tail.add_row(dur(span.get("duration_ns")),
                     Text(visible(f"{what}  {outcome(span)}"), style="red" if bad else ""))

    parts = [top, functions, *([steps] if steps is not None else []), idle, objects,
             last_error, tail, footer]
    return Group(*parts)


MAX_STEP_ROWS = 6


def _steps_table(snap: Snapshot, width: int) -> Table | None:
    """Where the reconciles' time goes: the steps with the most time, each with its share
    of the time of the reconcile function that called it (nested steps are indented)."""
    if not snap.steps:
        return None
    table = safe_table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, padding=(0, 1),
                  show_edge=False)
    table.add_column("step", ratio=3, no_wrap=True, overflow="ellipsis",
                     min_width=min(40, max(16, width - 40)))
    for column in ("calls", "total", "mean", "share"):
        table.add_column(column, justify="right", no_wrap=True)
    shown = sorted(snap.steps, key=lambda st: -st.total_ns)[:MAX_STEP_ROWS]
    for st in shown:
        parent = snap.functions.get(st.parent_function)
        share = st.total_ns / parent.total_ns if parent and parent.total_ns else None
        name = short_function(st.function).rsplit(".", 1)[-1]
        table.add_row("  " * (st.depth - 1) + name, str(st.calls), dur(st.total_ns),
                      dur(st.total_ns // st.calls if st.calls else None),
                      "-" if share is None else f"{min(share, 1):.0%}")
    return table
