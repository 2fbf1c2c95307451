"""Where a reconcile's time goes: its steps (probe role "step", child spans), per reconcile
function: calls, total time, and share of the reconcile calls' own total time."""

from __future__ import annotations

import polars as pl

from tracer.analysis.load import Loaded

NS = 1_000_000_000


def summary(loaded: Loaded) -> list[dict] | None:
    """One entry per reconcile function that has steps, most time first:

        function, calls (its finished calls), total_s,
        in_steps_share (share of its time inside depth-1 steps: the rest is its own code),
        steps[]: function, depth (1: called by the reconcile; 2+: inside another step),
                 calls, per_reconcile (calls per reconcile call), total_s, mean_s, max_s,
                 share (of the reconcile function's total time; nested steps overlap their
                 callers, so only depth-1 shares add up)
    """
    steps = loaded.steps
    if steps is None or steps.height == 0 or loaded.starts_only:
        return None
    reconciles = loaded.spans.filter(pl.col("end").is_not_null()).select(
        "source", pl.col("id").alias("parent"), pl.col("function").alias("reconcile"),
        (pl.col("end") - pl.col("start")).alias("parent_ns"))
    totals = reconciles.group_by("reconcile").agg(
        pl.len().alias("calls"), pl.col("parent_ns").sum().alias("total_ns"))
    joined = steps.filter(pl.col("end").is_not_null()).join(
        reconciles.select("source", "parent", "reconcile"), on=["source", "parent"])
    if joined.height == 0:
        return None
    per_step = joined.group_by("reconcile", "function").agg(
        pl.len().alias("calls"), pl.col("depth").min().alias("depth"),
        (pl.col("end") - pl.col("start")).sum().alias("total_ns"),
        (pl.col("end") - pl.col("start")).max().alias("max_ns"))
    out = []
    for parent in totals.sort("total_ns", descending=True).iter_rows(named=True):
        rows = per_step.filter(pl.col("reconcile") == parent["reconcile"]).sort(
            "total_ns", descending=True)
        if rows.height == 0:
            continue
        total = parent["total_ns"] or 0
        entries = [{
            "function": r["function"],
            "depth": r["depth"],
            "calls": r["calls"],
            "per_reconcile": r["calls"] / parent["calls"],
            "total_s": r["total_ns"] / NS,
            "mean_s": r["total_ns"] / r["calls"] / NS,
            "max_s": r["max_ns"] / NS,
            "share": r["total_ns"] / total if total else None,
        } for r in rows.iter_rows(named=True)]
        direct = sum(r["total_ns"] for r in rows.iter_rows(named=True) if r["depth"] == 1)
        out.append({"function": parent["reconcile"], "calls": parent["calls"],
                    "total_s": total / NS,
                    "in_steps_share": direct / total if total else None,
                    "steps": entries})
    return out or None
