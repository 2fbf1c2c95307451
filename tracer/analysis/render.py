"""The report dict as text for a terminal (rich tables); `--json` prints the dict instead."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracer.terminal import safe_table, visible


def _t(seconds: float | None) -> str:
    """A time in its natural unit: 830 µs, 1.06 ms, 5.205 s."""
    if seconds is None:
        return "-"
    magnitude = abs(seconds)
    if magnitude < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if magnitude < 1:
        return f"{seconds * 1e3:.3g} ms"
    if magnitude < 600:
        return f"{seconds:.3f} s"
    return f"{seconds / 60:.1f} min"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def _n(value) -> str:
    return "-" if value is None else f"{value:,}"


def short_function(name: str | None) -> str:
    """`example.com/op/controllers.(*FooReconciler).Reconcile` -> `FooReconciler`; other
    functions keep their last path element (`pkg.(*T).Method`, `reconcile`)."""
    if not name:
        return "(start times)"
    tail = name.rsplit("/", 1)[-1]
    if tail.endswith(").Reconcile") and "(" in tail:
        return tail[tail.index("(") + 1: -len(").Reconcile")].lstrip("*")
    return tail


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = safe_table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, column in enumerate(columns):
        # A name may be as long as its author likes: it is cut, the figures stay.
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0,
                         overflow="ellipsis" if i == 0 else "fold",
                         max_width=60 if i == 0 else None)
    return table


def _calls_table(rows: list[tuple[str, dict]]) -> Table:
    table = _table("Calls", ("", "calls", "unfinished", "rate/s", "errors", "panics",
                             "requeue", "requeue-after"))
    for label, g in rows:
        rq = g["requeues"] or {}
        table.add_row(
            label, _n(g["calls"]), _n(g["unfinished"]),
            "-" if g["rate_per_s"] is None else f"{g['rate_per_s']:.3g}",
            _n((g["errors"] or {}).get("count")), _n((g["panics"] or {}).get("count")),
            _n(rq.get("requeue")), _n(rq.get("requeue_after")))
    return table


def _durations_table(rows: list[tuple[str, dict]]) -> Table:
    table = _table("Durations, concurrency and idle time",
                   ("", "p50", "p90", "p99", "max", "peak", "idle", "longest idle"))
    for label, g in rows:
        d = g["duration_s"] or {}
        idle = g["idle"] or {}
        table.add_row(label, _t(d.get("p50")), _t(d.get("p90")), _t(d.get("p99")),
                      _t(d.get("max")), _n(g["peak_concurrency"]), _pct(idle.get("share")),
                      _t(idle.get("longest_gap_s")))
    return table


def _intervals_table(rows: list[tuple[str, dict]]) -> Table:
    table = _table("Intervals between consecutive starts",
                   ("", "count", "mean", "sd", "min", "median", "max"))
    for label, g in rows:
        i = g["interval_s"] or {}
        table.add_row(label, _n(i.get("count")), _t(i.get("mean")), _t(i.get("sd")),
                      _t(i.get("min")), _t(i.get("median")), _t(i.get("max")))
    return table


def _histogram(hist: dict | None, width: int = 40) -> Text | None:
    if not hist:
        return None
    edges, counts = hist["edges_s"], hist["counts"]
    rows = [(f"< {_t(edges[0])}", hist["below"])] if hist["below"] else []
    rows += [(f"{_t(a)} .. {_t(b)}", c) for a, b, c in zip(edges, edges[1:], counts,
                                                           strict=False)]
    if hist["above"]:
        rows.append((f"> {_t(edges[-1])}", hist["above"]))
    top = max(count for _, count in rows) or 1
    label_width = max(len(label) for label, _ in rows)
    text = Text("Interval histogram\n", style="italic")
    for label, count in rows:
        bar = "█" * round(width * count / top)
        text.append(f"  {label:>{label_width}} {count:>8,} {bar}\n")
    return text


def _causes(report: dict) -> list:
    out: list = []
    summary = report.get("causes")
    if summary:
        table = _table("Why each reconcile happened", ("cause", "calls", "share"))
        for cause, count in summary["counts"].items():
            table.add_row(cause, _n(count), _pct(summary["shares"][cause]))
        out.append(table)
        latency = summary.get("change_latency_s")
        if latency:
            out.append(_latency_line("change-to-reconcile latency", latency))
    changes = report.get("changes")
    if changes:
        out.append(Text(f"{changes['pairs']:,} change/reconcile pairs from "
                        f"{visible(changes['file'])}"
                        + (f", {changes['negative']} with the reconcile first"
                           if changes["negative"] else "")))
        out.append(_latency_line("change-to-reconcile latency", changes["latency_s"], "pairs"))
    return out


def _latency_line(label: str, latency: dict, unit: str = "calls") -> Text:
    return Text(f"{label}: mean {_t(latency['mean'])}, median {_t(latency['median'])}, "
                f"p90 {_t(latency['p90'])}, max {_t(latency['max'])} "
                f"({latency['count']:,} {unit})")


def _errors(total: dict) -> Text | None:
    lines = []
    for label, key in (("errors", "errors"), ("panics", "panics")):
        by_type = (total.get(key) or {}).get("by_type") or {}
        if by_type:
            parts = ", ".join(f"{kind} {count:,}" for kind, count in by_type.items())
            lines.append(f"{label} by type: {parts}")
    return Text("\n".join(map(visible, lines))) if lines else None


def _objects_table(objects: list[dict], top: int, several_functions: bool) -> Table:
    shown = objects[:top]
    table = _table(f"Objects (top {len(shown)} of {len(objects)} by calls)",
                   ("object", "calls", "p50", "p99", "errors", "requeues", "idle",
                    "main cause"))
    for g in shown:
        label = f"{g['namespace']}/{g['name']}"
        if several_functions:
            label += f" ({short_function(g['function'])})"
        d = g["duration_s"] or {}
        rq = g["requeues"] or {}
        causes = g.get("causes") or {}
        main = max(causes.items(), key=lambda item: item[1], default=None)
        table.add_row(label, _n(g["calls"]), _t(d.get("p50")), _t(d.get("p99")),
                      _n((g["errors"] or {}).get("count")),
                      _n((rq.get("requeue") or 0) + (rq.get("requeue_after") or 0)),
                      _pct((g["idle"] or {}).get("share")),
                      "-" if main is None else f"{main[0]} {main[1] / g['calls']:.0%}")
    return table


def _cost(report: dict) -> list:
    """The tracer's own cost: the operator's stopped time, durations raw and corrected."""
    summary = report.get("tracer_cost")
    if not summary:
        return []
    lines = []
    for s in summary["sources"]:
        if s["cost_per_hit_s"] is None:
            lines.append(f"{s['path']}: cost per hit not measured ({s['measured']})")
            continue
        lines.append(f"{s['path']} ({s['backend']}): {_n(s['hits'])} hits x "
                     f"{s['cost_per_hit_s'] * 1e6:.1f} µs = operator stopped "
                     f"{_t(s['stopped_s'])} ({_pct(s['stopped_share'])} of the time "
                     f"observed); cost per hit measured {s['measured']}")
    table = _table("Durations with the tracer's share taken out (corrected = raw - hits inside "
                   "the call x cost per hit)", ("", "", "p50", "p90", "p99", "mean"))
    for g in summary["functions"]:
        for column in ("raw", "corrected"):
            d = g[column]
            table.add_row(short_function(g["function"]) if column == "raw" else "", column,
                          _t(d["p50"]), _t(d["p90"]), _t(d["p99"]), _t(d["mean"]))
    return [Text("\n".join(map(visible, lines))), table]


def _steps_tables(report: dict) -> list[Table]:
    """Per reconcile function with steps: each step's calls, time and share of its time."""
    tables = []
    for parent in report.get("steps") or []:
        table = _table(f"Steps of {short_function(parent['function'])} "
                       f"({_pct(parent['in_steps_share'])} of its time in steps)",
                       ("step", "calls", "per call", "total", "mean", "max", "share"))
        for g in parent["steps"]:
            label = "  " * (g["depth"] - 1) + short_function(g["function"]).rsplit(".", 1)[-1]
            table.add_row(label, _n(g["calls"]), f"{g['per_reconcile']:.2g}",
                          _t(g["total_s"]), _t(g["mean_s"]), _t(g["max_s"]),
                          _pct(g["share"]))
        tables.append(table)
    return tables


def render(report: dict, console: Console, top: int = 10) -> None:
    window = report["window"]
    sources = ", ".join(
        f"{s['path']} ({s['format']}, {s['spans']:,} "
        f"{'spans' if s['format'] == 'trace' else 'starts'}"
        f"{', cut' if s['truncated'] else ''})" for s in report["sources"])
    console.print(Text(f"{visible(sources)}\n{window['start']} .. {window['end']}: "
                       f"{_t(window['observed_s'])} observed", style="bold"))
    total = report["total"]
    rows = [("all", total)]
    if len(report["functions"]) > 1 or report["input"] == "trace":
        rows += [(short_function(g["function"]), g) for g in report["functions"]]
    console.print()
    if report["input"] == "trace":
        console.print(_calls_table(rows))
        console.print()
        console.print(_durations_table(rows))
        console.print()
        for part in _cost(report):
            console.print(part)
            console.print()
        for table in _steps_tables(report):
            console.print(table)
            console.print()
    else:
        console.print(Text(f"{total['calls']:,} start times (no durations, idle time or "
                           "results in these files)"))
    console.print(_intervals_table(rows))
    hist = _histogram((total["interval_s"] or {}).get("histogram"))
    if hist:
        console.print(hist)
    for part in _causes(report):
        console.print()
        console.print(part)
    errors = _errors(total)
    if errors:
        console.print()
        console.print(errors)
    if report["objects"] and top > 0:
        console.print()
        console.print(_objects_table(report["objects"], top, len(report["functions"]) > 1))
