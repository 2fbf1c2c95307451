"""`tracer report`: the report as a dict (the `--json` output) and as text for a terminal.

JSON keys (stable; times in seconds, shares in 0..1, null where the input cannot tell):

    report_version, input ("trace" | "timestamps"),
    sources[]: path, format ("trace" | "csv" | "lines"), spans, events, truncated
    window: start, end (ISO-8601 UTC), observed_s, segments
    total, functions[] (+ function), objects[] (+ function, namespace, name), each with:
        calls, finished, unfinished (counted in calls, not in durations),
        rate_per_s (calls per observed second; timestamps files: first to last start),
        duration_s: p50, p90, p99, max, mean                (finished calls only)
        interval_s: count, mean, sd (sample, n-1), min, median, max,
                    histogram: edges_s, counts, below, above
        idle: share, longest_gap_s;  peak_concurrency
        errors: count, by_type;  panics: count, by_type
        requeues: requeue, requeue_after, requeue_after_s: min, median, max
        causes: {cause: count}                                (traces)
    causes: total, counts, shares, change_latency_s (count, mean, median, p90, max, min),
            settings                                          (null for timestamps files)
    changes: file, pairs, latency_s (as above)                (--changes only)
    steps[]: where each reconcile function's time goes, from its child spans (probe role
            "step"): see tracer.analysis.steps.summary          (null without steps)
    tracer_cost: the tracer's own cost, when a header says what a hit cost:
            sources[]: path, backend, cost_per_hit_s, measured, hits, stopped_s, stopped_share
            functions[]: function, calls, raw and corrected: p50, p90, p99, mean
            (see tracer.analysis.cost)                        (null without a measured cost)
"""

from __future__ import annotations

import datetime as dt
import math
from concurrent.futures import ThreadPoolExecutor

import polars as pl

from tracer.analysis import causes as causes_mod
from tracer.analysis import cost as cost_mod
from tracer.analysis import stats
from tracer.analysis import steps as steps_mod
from tracer.analysis.load import Loaded
from tracer.errors import UserError

REPORT_VERSION = 1
NS = 1_000_000_000


def parse_bins(spec: str | None) -> int | list[float] | None:
    """`--bins`: a count of equal bins, or ascending edges in seconds (`4.9,5.5`)."""
    if spec is None:
        return None
    text = spec.strip()
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= 1000:
            raise UserError(f"--bins {spec}: give 1 to 1000 bins, or edges like 4.9,5.5")
        return count
    try:
        edges = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--bins {spec}: give a number of bins or edges in seconds, "
                        "like 4.9,5.5") from None
    if len(edges) < 2 or any(not math.isfinite(e) or e < 0 for e in edges) or any(
            b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise UserError(f"--bins {spec}: edges must be two or more ascending seconds >= 0")
    return edges


def _iso(ns: int) -> str:
    when = dt.datetime.fromtimestamp(ns // NS, dt.UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{ns % NS // 1_000_000:03d}Z"


def _clean(value):
    """JSON has no NaN: a statistic of too few values is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def build(loaded: Loaded, *, bins: int | list[float] | None = None,
          settings: causes_mod.Settings | None = None,
          changes: list[int] | None = None, changes_path: str | None = None
          ) -> tuple[dict, pl.DataFrame]:
    """The report, and the spans (sorted by start) with their causes for `--causes-out`."""
    settings = settings or causes_mod.Settings()
    spans = loaded.spans
    # The causes and the statistics do not need each other until the per-group cause counts:
    # polars lets go of the GIL, so the attribution runs on the other core meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        attributing = None if loaded.starts_only else pool.submit(
            causes_mod.attribute, spans, loaded.events, settings)
        frame = stats.prepare(spans, loaded.segments)
        intervals = frame["start"].diff().filter(frame["segment"].diff().fill_null(1) == 0)
        if isinstance(bins, int):
            edges = stats.equal_edges(intervals, bins)
        elif isinstance(bins, list):
            edges = [int(round(edge * NS)) for edge in bins]
        else:
            edges = stats.nice_edges(intervals)
        groupings = [stats.Grouping("total", "all_code", ())]
        if not loaded.starts_only:
            groupings += [stats.Grouping("functions", "fn_code", ("function",)),
                          stats.Grouping("objects", "obj_code",
                                         ("function", "namespace", "name"))]
        grouped = stats.all_stats(frame, spans, groupings, loaded.segments, edges,
                                  loaded.starts_only)
        cause_summary = None
        if attributing is not None:
            attributed = attributing.result()
            cause_summary = causes_mod.summary(attributed, settings)
            frame = frame.with_columns(attributed[frame["row"]])
    stats.add_causes(grouped, frame, groupings)
    total = grouped["total"][0]
    functions = grouped.get("functions", [])
    objects = grouped.get("objects", [])
    functions.sort(key=lambda g: (-g["calls"], g["function"] or ""))
    objects.sort(key=lambda g: (-g["calls"], g["namespace"], g["name"], g["function"] or ""))

    segments = loaded.segments
    report = {
        "report_version": REPORT_VERSION,
        "input": "timestamps" if loaded.starts_only else "trace",
        "sources": [{"path": s.path, "format": s.format, "spans": s.spans, "events": s.events,
                     "truncated": s.truncated} for s in loaded.sources],
        "window": {"start": _iso(segments[0][0]), "end": _iso(segments[-1][1]),
                   "observed_s": sum(hi - lo for lo, hi in segments) / NS,
                   "segments": len(segments)},
        "total": total,
        "functions": functions,
        "objects": objects,
        "causes": cause_summary,
        "changes": None,
        "steps": steps_mod.summary(loaded),
        "tracer_cost": None if loaded.starts_only else cost_mod.summary(loaded),
    }
    if changes is not None:
        report["changes"] = change_pairs(loaded, changes, changes_path or "")
    return _clean(report), frame


def change_pairs(loaded: Loaded, changes: list[int], path: str) -> dict:
    """Research pairs: row i of the changes file caused row i of the reconciles file."""
    if not loaded.starts_only or len(loaded.sources) != 1:
        raise UserError("--changes pairs one timestamps file of reconcile starts with its "
                        "changes file (a trace's own watch events give the change latency)")
    reconciles = loaded.spans["start"].to_list()  # file order: row i is row i
    if len(changes) != len(reconciles):
        raise UserError(f"--changes {path} has {len(changes)} rows but "
                        f"{loaded.sources[0].path} has {len(reconciles)}: row i of one must "
                        "pair with row i of the other")
    latency = pl.Series([r - c for r, c in zip(reconciles, changes, strict=True)],
                        dtype=pl.Int64)
    return {"file": path, "pairs": len(changes),
            "negative": int((latency < 0).sum()),
            "latency_s": causes_mod.latency_summary(latency)}


def evidence(frame: pl.DataFrame, loaded: Loaded) -> pl.DataFrame:
    """Every call's cause and evidence, one row per span in start order (`--causes-out`):
    file, id, function, namespace, name, start (ISO), cause, previous_id and trigger_id (span
    ids or null; with several files an id may be another file's), event (the watch event's
    kind, namespace, name, event, ts as ISO), expected_delay_s and actual_delay_s."""
    spans = loaded.spans
    files = pl.Series([s.path for s in loaded.sources])
    rows = frame["row"]
    events = loaded.events.select(
        "kind", "namespace", "name", "event", _iso_expr(pl.col("ts")).alias("ts"))
    event = events[frame["event"]] if events.height else None
    return pl.DataFrame({
        "file": files.gather(frame["source"].cast(pl.Int64)),
        "id": frame["id"],
        "function": spans["function"].gather(rows),
        "namespace": spans["namespace"].gather(rows),
        "name": spans["name"].gather(rows),
        "start": frame.select(_iso_expr(pl.col("start"))).to_series(),
        "cause": frame["cause"],
        "previous_id": spans["id"].gather(frame["previous"]),
        "trigger_id": spans["id"].gather(frame["trigger"]),
        "event": (pl.Series([None] * frame.height, dtype=pl.Struct(
            {c: pl.String for c in ("kind", "namespace", "name", "event", "ts")}))
            if event is None else event.select(
                pl.when(pl.col("ts").is_not_null()).then(pl.struct(pl.all())))
            .to_series()),
        "expected_delay_s": frame["expected_ns"] / NS,
        "actual_delay_s": frame["actual_ns"] / NS,
    })


def _iso_expr(ns: pl.Expr) -> pl.Expr:
    return pl.from_epoch(ns, "ns").dt.to_string("%Y-%m-%dT%H:%M:%S%.9fZ")
