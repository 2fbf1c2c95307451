"""Per-group statistics of calls: counts, durations, intervals, idle time, concurrency, errors.

Every grouping (the whole run, each function, each object) is computed at once over integer
group codes, with one sort of the frame, so a million spans take a second or two. Times are
wall-clock ns in, seconds out.

The input frame is sorted by start and carries `segment`: the index of the observed window the
call started in. Windows are the merged [attach, end] of the files; the gaps between runs
traced apart were not watched, so no interval or idle time crosses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

NS = 1_000_000_000


@dataclass(frozen=True)
class Grouping:
    name: str  # "total", "functions", "objects"
    code: str  # an integer column; null rows belong to no group
    labels: tuple[str, ...]  # columns naming a group in the output


def _s(value: float | int | None) -> float | None:
    return None if value is None else float(value) / NS


def nice_edges(values: pl.Series, bins: int = 10) -> list[int]:
    """Equal-width edges with a round width over the 1st..99th percentile, so one outlier
    (a 21 s gap among 5 s requeues) does not squash every bar into one; ns."""
    values = values.drop_nulls()
    if values.len() == 0:
        return []
    lo, hi = values.quantile(0.01, "lower"), values.quantile(0.99, "higher")
    if hi <= lo:
        lo, hi = values.min(), values.max()
    if hi <= lo:
        return [int(lo), int(lo) + 1]
    raw = (hi - lo) / bins
    exponent = 10 ** math.floor(math.log10(raw))
    width = next(m * exponent for m in (1, 2, 2.5, 5, 10) if m * exponent >= raw)
    start = math.floor(lo / width) * width
    edges = [start + i * width for i in range(bins + 2) if start + (i - 1) * width < hi]
    return [int(round(e)) for e in edges]


def equal_edges(values: pl.Series, bins: int) -> list[int]:
    """`bins` equal-width bins from the minimum to the maximum; ns."""
    values = values.drop_nulls()
    if values.len() == 0:
        return []
    lo, hi = int(values.min()), int(values.max())
    if hi == lo:
        hi = lo + 1
    return [int(round(lo + (hi - lo) * i / bins)) for i in range(bins + 1)]


# What the statistics read: the names are looked up per group at the end (sorting a million
# rows of long strings would cost more than everything else here).
NUMERIC = ["source", "id", "start", "end", "requeue", "requeue_after", "error_type",
           "panic_type", "status", "fn_code", "obj_code",
           "cause", "previous", "trigger", "event", "expected_ns", "actual_ns"]


def prepare(spans: pl.DataFrame, segments: list[tuple[int, int]]) -> pl.DataFrame:
    """Sort by start; keep `row` (the row in `spans`), add `segment`, its bounds, and
    `all_code` (the whole run's group)."""
    los = pl.Series([lo for lo, _ in segments], dtype=pl.Int64)
    his = pl.Series([hi for _, hi in segments], dtype=pl.Int64)
    keep = [c for c in spans.columns if c in NUMERIC]
    spans = (spans.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), *keep)
             .sort("start", "source", "id", nulls_last=True))
    index = (los.search_sorted(spans["start"], side="right").cast(pl.Int64) - 1).clip(
        0, len(los) - 1)
    return spans.with_columns(
        index.alias("segment"),
        los.gather(index).alias("seg_lo"),
        his.gather(index).alias("seg_hi"),
        pl.lit(0, pl.UInt32).alias("all_code"),
    )


def _names(frame: pl.DataFrame, spans: pl.DataFrame, g: Grouping) -> dict[int, dict]:
    """{code: {label: value}} from the first row of each group in the original `spans`."""
    if not g.labels:
        return {}
    firsts = (frame.filter(pl.col(g.code).is_not_null()).group_by(g.code)
              .agg(pl.col("row").first()))
    named = spans.select(g.labels)[firsts["row"]]
    return {code: dict(zip(g.labels, values, strict=True))
            for code, values in zip(firsts[g.code].to_list(), named.iter_rows(), strict=True)}


def all_stats(frame: pl.DataFrame, spans: pl.DataFrame, groupings: list[Grouping],
              segments: list[tuple[int, int]], edges: list[int],
              starts_only: bool) -> dict[str, list[dict]]:
    """{grouping name: one dict of statistics per group}. `frame` comes from `prepare`
    (of `spans`, which names the groups); `edges` are the interval histogram's edges, ns."""
    wall = sum(hi - lo for lo, hi in segments)
    nseg = len(segments)
    busy_to = pl.coalesce("end", "seg_hi")
    columns = [(pl.col("end") - pl.col("start")).alias("duration")]
    for g in groupings:
        # One partition per group and window: nothing is measured across unwatched gaps.
        part = (pl.col(g.code).cast(pl.Int64) * nseg + pl.col("segment"))
        columns += [
            pl.col("start").diff().over(part).alias(f"{g.code}_interval"),
            (pl.col("start") - pl.coalesce(busy_to.cum_max().shift(1).over(part), "seg_lo"))
            .clip(lower_bound=0).alias(f"{g.code}_gap"),
        ]
    frame = frame.with_columns(columns)
    peaks = {} if starts_only else _peaks(frame, [g.code for g in groupings])
    out = {}
    for g in groupings:
        rows = frame.filter(pl.col(g.code).is_not_null())
        out[g.name] = _group(rows, g, _names(frame, spans, g), segments, wall, edges,
                             starts_only, peaks.get(g.code, {}))
    return out


def _group(frame: pl.DataFrame, g: Grouping, names: dict[int, dict],
           segments: list[tuple[int, int]], wall: int, edges: list[int], starts_only: bool,
           peaks: dict[int, int]) -> list[dict]:
    code, interval = g.code, pl.col(f"{g.code}_interval")
    after = pl.col("requeue_after").filter(pl.col("requeue_after") > 0)
    basics = frame.group_by(code).agg(
        pl.len().alias("calls"),
        pl.col("end").is_not_null().sum().alias("finished"),
        pl.col("duration").quantile(0.5, "linear").alias("d50"),
        pl.col("duration").quantile(0.9, "linear").alias("d90"),
        pl.col("duration").quantile(0.99, "linear").alias("d99"),
        pl.col("duration").max().alias("dmax"),
        pl.col("duration").mean().alias("dmean"),
        interval.count().alias("icount"),
        interval.mean().alias("imean"),
        interval.std(ddof=1).alias("isd"),
        interval.min().alias("imin"),
        interval.median().alias("imedian"),
        interval.max().alias("imax"),
        pl.col("requeue").fill_null(False).sum().alias("requeue"),
        (pl.col("requeue_after") > 0).sum().alias("requeue_after"),
        after.min().alias("ramin"), after.median().alias("ramed"), after.max().alias("ramax"),
        (pl.col("status") == "error").sum().alias("errors"),
        (pl.col("status") == "panic").sum().alias("panics"),
    ).sort(code)
    histograms = _histograms(frame, code, interval, edges)
    idle = {} if starts_only else _idle(frame, code, segments, wall)
    errors = counts_by(frame, code, "error_type")
    panics = counts_by(frame, code, "panic_type")

    out = []
    for row in basics.iter_rows(named=True):
        key = row[code]
        entry: dict = dict(names.get(key, {}))
        entry["calls"] = row["calls"]
        entry["finished"] = None if starts_only else row["finished"]
        entry["unfinished"] = None if starts_only else row["calls"] - row["finished"]
        entry["rate_per_s"] = row["calls"] / (wall / NS) if wall > 0 else None
        entry["duration_s"] = None if starts_only or not row["finished"] else {
            "p50": _s(row["d50"]), "p90": _s(row["d90"]), "p99": _s(row["d99"]),
            "max": _s(row["dmax"]), "mean": _s(row["dmean"])}
        entry["interval_s"] = None if not row["icount"] else {
            "count": row["icount"], "mean": _s(row["imean"]), "sd": _s(row["isd"]),
            "min": _s(row["imin"]), "median": _s(row["imedian"]), "max": _s(row["imax"]),
            "histogram": histograms.get(key)}
        entry["idle"] = idle.get(key)
        entry["peak_concurrency"] = peaks.get(key)
        if starts_only:
            entry["errors"] = entry["panics"] = entry["requeues"] = None
        else:
            entry["errors"] = {"count": row["errors"], "by_type": errors.get(key, {})}
            entry["panics"] = {"count": row["panics"], "by_type": panics.get(key, {})}
            entry["requeues"] = {
                "requeue": row["requeue"], "requeue_after": row["requeue_after"],
                "requeue_after_s": None if not row["requeue_after"] else {
                    "min": _s(row["ramin"]), "median": _s(row["ramed"]),
                    "max": _s(row["ramax"])}}
            entry["causes"] = None  # filled in by add_causes
        entry["_code"] = key
        out.append(entry)
    return out


def add_causes(grouped: dict[str, list[dict]], frame: pl.DataFrame,
               groupings: list[Grouping]) -> None:
    """Each group's calls by cause (the frame's `cause` column), computed once the causes are
    known; also drops the internal `_code` of every group."""
    for g in groupings:
        counts = counts_by(frame, g.code, "cause") if "cause" in frame.columns else None
        for entry in grouped[g.name]:
            code = entry.pop("_code")
            if counts is not None:
                entry["causes"] = counts.get(code, {})
            elif entry.get("causes") is None:
                entry.pop("causes", None)


def counts_by(frame: pl.DataFrame, code: str, column: str) -> dict[int, dict]:
    """{group: {value: count}} for the non-null values of `column`, most frequent first."""
    counted = (frame.filter(pl.col(column).is_not_null()).group_by(code, column).len()
               .sort("len", column, descending=[True, False]))
    out: dict[int, dict] = {}
    for key, value, count in counted.iter_rows():
        out.setdefault(key, {})[value] = count
    return out


def _histograms(frame: pl.DataFrame, code: str, interval: pl.Expr,
                edges: list[int]) -> dict[int, dict]:
    """Bins [e0, e1), [e1, e2), ... [e(n-1), en] (the last one closed), plus below and above."""
    if len(edges) < 2:
        return {}
    intervals = frame.select(code, interval.alias("v")).filter(pl.col("v").is_not_null())
    last = len(edges) - 1
    index = pl.Series(edges, dtype=pl.Int64).search_sorted(intervals["v"], side="right")
    counted = intervals.with_columns(
        # The top edge belongs to the last bin.
        pl.when(pl.col("v") == edges[-1]).then(pl.lit(last - 1, pl.Int64))
        .otherwise(index.cast(pl.Int64) - 1).alias("bin")).group_by(code, "bin").len()
    out: dict[int, dict] = {}
    for key, bin_, count in counted.iter_rows():
        hist = out.setdefault(key, {"edges_s": [_s(e) for e in edges],
                                    "counts": [0] * last, "below": 0, "above": 0})
        if bin_ < 0:
            hist["below"] += count
        elif bin_ >= last:
            hist["above"] += count
        else:
            hist["counts"][bin_] = count
    return out


def _idle(frame: pl.DataFrame, code: str, segments: list[tuple[int, int]],
          wall: int) -> dict[int, dict]:
    """Share of the watched time with no call of the group in flight, and the longest gap.

    An unfinished call is in flight until its window ends."""
    per_window = frame.group_by(code, "segment").agg(
        pl.col(f"{code}_gap").sum().alias("sum"), pl.col(f"{code}_gap").max().alias("max"),
        (pl.col("seg_hi").first() - pl.coalesce("end", "seg_hi").max())
        .clip(lower_bound=0).alias("tail"),
    )
    per_group = per_window.group_by(code).agg(
        (pl.col("sum") + pl.col("tail")).sum().alias("idle"),
        pl.max_horizontal("max", "tail").max().alias("longest"),
        pl.col("segment").alias("seen"),
    )
    lengths = [hi - lo for lo, hi in segments]
    out = {}
    for key, idle, longest, seen in per_group.iter_rows():
        # Windows in which the group had no call at all were idle for it throughout.
        unseen = [length for i, length in enumerate(lengths) if i not in set(seen)]
        idle += sum(unseen)
        out[key] = {"share": idle / wall if wall > 0 else None,
                    "longest_gap_s": _s(max([longest, *unseen]))}
    return out


def _peaks(frame: pl.DataFrame, codes: list[str]) -> dict[str, dict[int, int]]:
    """Most calls of each group in flight at once, for every grouping from one sort. A call
    ending when another starts does not overlap it; unfinished calls stay in flight."""
    starts = frame.select(*codes, pl.col("start").alias("t"), pl.lit(1, pl.Int32).alias("d"))
    ends = frame.filter(pl.col("end").is_not_null()).select(
        *codes, pl.col("end").alias("t"), pl.lit(-1, pl.Int32).alias("d"))
    steps = pl.concat([starts, ends]).sort("t", "d")
    out = {}
    for code in codes:
        levels = (steps.filter(pl.col(code).is_not_null())
                  .select(code, pl.col("d").cum_sum().over(code).alias("level"))
                  .group_by(code).agg(pl.col("level").max()))
        out[code] = dict(levels.iter_rows())
    return out
