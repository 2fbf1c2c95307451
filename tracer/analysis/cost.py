"""The tracer's own cost in a recorded run, and durations with its share taken out.

A trace header says what one hit cost the operator (`cost_per_hit_ns`, measured at attach);
the end line says how many hits there were. Stopped time = hits x cost. A call's duration
holds the hits made while it ran: half of its own entry hit (the part after the timestamp)
and half of its return hit (the part before it), so one hit in all, plus two for every step
span inside it. Corrected duration = raw - hits inside x cost; it is an estimate (marked
`corrected`), the raw one stays.
"""

from __future__ import annotations

import polars as pl

from tracer.analysis.load import Loaded

NS = 1e9


def _s(ns: float | None) -> float | None:
    return None if ns is None else ns / NS


def summary(loaded: Loaded) -> dict | None:
    """{"sources": [...per trace file...], "functions": [...raw and corrected durations...]},
    or None when no file says what a hit cost."""
    costs = {i: s.header.get("cost_per_hit_ns") for i, s in enumerate(loaded.sources)
             if s.format == "trace" and s.header and s.header.get("cost_per_hit_ns")}
    if not costs:
        return None
    sources = []
    for source in loaded.sources:
        if source.format != "trace" or not source.header:
            continue
        cost = source.header.get("cost_per_hit_ns")
        hits = ((source.end or {}).get("pairing") or {}).get("hits")
        observed = source.window[1] - source.window[0]
        stopped = hits * cost if hits is not None and cost else None
        sources.append({
            "path": source.path, "backend": source.header.get("backend"),
            "cost_per_hit_s": _s(cost), "measured": source.header.get("cost_measured"),
            "hits": hits, "stopped_s": _s(stopped),
            "stopped_share": stopped / observed if stopped is not None and observed > 0
            else None,
        })
    spans = loaded.spans.filter(pl.col("end").is_not_null()
                                & pl.col("source").is_in(list(costs)))
    inner = pl.lit(0, pl.Int64)
    if loaded.steps is not None and loaded.steps.height:
        counts = loaded.steps.group_by("source", "parent").agg(pl.len().alias("n_steps"))
        spans = spans.join(counts, left_on=["source", "id"], right_on=["source", "parent"],
                           how="left")
        inner = pl.col("n_steps").fill_null(0).cast(pl.Int64)
    cost_of = pl.col("source").replace_strict(costs, return_dtype=pl.Int64)
    spans = spans.with_columns(
        (pl.col("end") - pl.col("start")).alias("raw"),
        ((pl.col("end") - pl.col("start")) - (1 + 2 * inner) * cost_of).clip(lower_bound=0)
        .alias("corrected"))
    functions = []
    for (function,), rows in sorted(spans.group_by("function"), key=lambda g: g[0][0] or ""):
        entry: dict = {"function": function, "calls": rows.height}
        for column in ("raw", "corrected"):
            values = rows[column]
            entry[column] = {"p50": _s(values.quantile(0.5, "linear")),
                             "p90": _s(values.quantile(0.9, "linear")),
                             "p99": _s(values.quantile(0.99, "linear")),
                             "mean": _s(values.mean())}
        functions.append(entry)
    return {"sources": sources, "functions": functions}
