"""Why each reconcile happened: every span gets one cause and the evidence for it.

controller-runtime starts a reconcile of an object for one of these reasons, and the trace
shows each of them:

- `requeue-after`: the previous call on the object returned RequeueAfter d (and no error); the
  work queue adds the object back d after that call returned.
- `requeue`: the previous call returned Requeue: true; the object goes back through the rate
  limiter (AddRateLimited), so it starts at most the per-object backoff later.
- `error-backoff`: the previous call returned an error or panicked; the rate limiter backs off
  per object, exponentially from 5 ms, doubling each failure in a row, capped (1000 s by
  default). A success or a RequeueAfter resets the count (Forget).
- `change`: a watch event on the object (an `event` record in the trace) came before it.
- `unexplained`: none of the above, including the first call on an object with no event.

An object's triggers (timers from calls that ended, watch events) wait until a call starts. A
call is caused by the earliest trigger that is due by its start, within that trigger's time
window; the queue merges an object added twice while it waits, so every trigger due by then is
used up by that call. A timer not due yet stays for a later call; one whose window passed
lapses. So every span gets exactly one cause, and none is dropped.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import polars as pl

from tracer.analysis.load import OBJECT_KEY, add_codes
from tracer.probes.naming import receiver_kind

MS = 1_000_000
CAUSES = ("requeue-after", "requeue", "error-backoff", "change", "unexplained")


@dataclass(frozen=True)
class Settings:
    backoff_base_ns: int = 5 * MS  # controller-runtime's ItemExponentialFailureRateLimiter
    backoff_cap_ns: int = 1_000_000 * MS
    # How early a follow-up may seem to start: the times are read around breakpoints.
    slack_ns: int = 1 * MS
    # How early a change may seem to cause a call: the tracer's watch and the operator's own
    # hear an event separately, the tracer's up to a few ms later (measured: 4.5 ms on a
    # loaded 2-core machine).
    event_slack_ns: int = 10 * MS
    # How late it may start (queue wait, busy workers), plus a share of the expected delay.
    tolerance_ns: int = 100 * MS
    relative: float = 0.1

    def backoff(self, failures: int) -> int:
        delay = self.backoff_base_ns << min(failures, 62)
        return min(delay, self.backoff_cap_ns)

    def late(self, expected: int) -> int:
        return self.tolerance_ns + int(self.relative * expected)

    def as_dict(self) -> dict:
        return {k: v / 1e9 if k.endswith("_ns") else v for k, v in asdict(self).items()}


def event_functions(kinds: list[str | None], functions: list[str]) -> list[list[str]]:
    """For each event kind, the functions (controllers) it triggers: the one whose receiver is
    named after the kind, else every one (a single-controller trace needs no names)."""
    by_kind: dict[str, list[str]] = {}
    for function in functions:
        kind = receiver_kind(function)
        if kind:
            by_kind.setdefault(kind, []).append(function)
    return [by_kind.get((kind or "").lower(), functions) for kind in kinds]


@dataclass
class _Timer:
    due: int  # when the queue would run it: for ordering triggers
    lo: int  # the window a start must fall in to be this timer's call
    hi: int
    cause: str
    row: int  # the span that set it
    expected: int  # the nominal delay after that span ended


class _Object:
    """One object's triggers, in the order its calls start."""

    __slots__ = ("timers", "ending", "failures", "last_row")

    def __init__(self) -> None:
        self.timers: list[_Timer] = []
        self.ending: list[tuple[int, int]] = []  # heap of (end, row) of calls still running
        self.failures = 0
        self.last_row: int | None = None


def attribute_sequential(spans: pl.DataFrame, events: pl.DataFrame,
                         settings: Settings = Settings()) -> pl.DataFrame:
    """`attribute`, written as the queue runs: one object at a time, call after call.

    The plain statement of the rules; `attribute` computes the same with joins, and the tests
    hold the two equal."""
    n = spans.height
    start = spans["start"].to_list()
    end = spans["end"].to_list()
    status = spans["status"].to_list()
    requeue = spans["requeue"].to_list()
    requeue_after = spans["requeue_after"].to_list()
    cause: list[str] = ["unexplained"] * n
    previous: list[int | None] = [None] * n
    trigger: list[int | None] = [None] * n
    event: list[int | None] = [None] * n
    expected: list[int | None] = [None] * n
    actual: list[int | None] = [None] * n

    events_of = _events_by_object(spans, events)
    for key, rows in _objects(spans):
        state = _Object()
        assigned = _assign_events(events_of.get(key, []), rows, start, end, settings)
        for row in rows:
            s = start[row]
            while state.ending and state.ending[0][0] <= s:
                _, done = heapq.heappop(state.ending)
                _release(state, done, end[done], status[done], requeue[done],
                         requeue_after[done], settings)
            best = _choose(state, s, assigned.get(row))
            previous[row] = state.last_row
            if best is None:
                if state.last_row is not None and end[state.last_row] is not None:
                    actual[row] = s - end[state.last_row]
            elif isinstance(best, _Timer):
                cause[row], trigger[row] = best.cause, best.row
                expected[row], actual[row] = best.expected, s - end[best.row]
            else:
                ts, event_row = best
                cause[row], event[row] = "change", event_row
                expected[row], actual[row] = 0, s - ts
            state.last_row = row
            if end[row] is not None:
                heapq.heappush(state.ending, (end[row], row))

    return pl.DataFrame({
        "cause": cause,
        "previous": pl.Series(previous, dtype=pl.Int64),
        "trigger": pl.Series(trigger, dtype=pl.Int64),
        "event": pl.Series(event, dtype=pl.Int64),
        "expected_ns": pl.Series(expected, dtype=pl.Int64),
        "actual_ns": pl.Series(actual, dtype=pl.Int64),
    })


def attribute(spans: pl.DataFrame, events: pl.DataFrame,
              settings: Settings = Settings()) -> pl.DataFrame:
    """A frame aligned with `spans` (any order) holding the cause of each span and its
    evidence: `previous` (row of the object's call before), `trigger` (row of the span whose
    result set the timer), `event` (row in `events`), `expected_ns` and `actual_ns` (the
    delay after the trigger; for a change, the event-to-start latency).

    The rules make each trigger's call independent of the others, which is what lets this
    run as joins (a million spans in about a second):
    - a call's timer is released when the call ends, so it is used up by the object's first
      call starting at or after both its end and its window's opening, if that call starts
      before the window closes (else it lapsed);
    - a watch event is used up by the object's first call starting after it, or by a call
      that started at most the event slack before it and had not ended when it was stamped;
    - the failure count behind a backoff depends only on the object's earlier calls in the
      order they ended;
    - a call's cause is the earliest due of the triggers it used up.
    """
    if "obj_code" not in spans.columns:
        spans = add_codes(spans)
    rows = spans.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col("obj_code").alias("obj"),
        "start", "end", "status", "requeue", "requeue_after")
    keyed = rows.filter(pl.col("obj").is_not_null())
    # One row per object naming it (a gather of a few rows, not a filter of every string).
    firsts = keyed.group_by("obj").agg(pl.col("row").first()).sort("obj")
    objects = spans.select(OBJECT_KEY)[firsts["row"]].with_columns(firsts["obj"])
    by_start = keyed.sort("start", "row").with_columns(
        pl.col("row").shift(1).over("obj").alias("previous"))
    candidates = by_start.select("obj", "start", pl.col("row").alias("m"))

    timers = _timers(keyed, settings)
    used_timers = (timers.sort("opens")
                   .join_asof(candidates, left_on="opens", right_on="start", by="obj",
                              strategy="forward", check_sortedness=False)
                   .filter(pl.col("m").is_not_null() & (pl.col("start") <= pl.col("hi")))
                   .sort("due", "released")
                   .group_by("m").first()
                   .select("m", pl.col("cause").alias("timer_cause"),
                           pl.col("row").alias("trigger"), pl.col("delay").alias("timer_delay"),
                           pl.col("due").alias("timer_due"), pl.col("end").alias("trigger_end")))

    # One row per (event, object it reaches): an event may reach several controllers.
    expanded = _event_objects(events, objects).with_row_index("pair")
    calls = by_start.select("obj", pl.col("start").alias("c_start"), pl.col("row").alias("c"),
                            pl.col("end").alias("c_end"))

    def first_call(key: pl.Expr, suffix: str) -> pl.DataFrame:
        return (expanded.with_columns(key.alias("key")).sort("key")
                .join_asof(calls, left_on="key", right_on="c_start", by="obj",
                           strategy="forward", check_sortedness=False)
                .select("pair", pl.col("c").alias(f"c{suffix}"),
                        pl.col("c_start").alias(f"s{suffix}"),
                        pl.col("c_end").alias(f"e{suffix}")))

    # The first call starting within the slack before the event, if it was still running
    # when the event was stamped (or had ended but no call follows the event soon: the
    # tracer heard the change late, after a short call), and no earlier event of the object
    # came within that slack (a second change heard while the call runs is the next call's,
    # as the queue marks the object dirty); else the first call starting after it.
    early = first_call(pl.col("ts") - settings.event_slack_ns, "1")
    late = first_call(pl.col("ts"), "2").select("pair", "c2", "s2")
    ts = pl.col("ts")
    expanded = expanded.sort("obj", "ts", "event").with_columns(
        pl.col("ts").shift(1).over("obj").alias("previous_ts"))
    explained = pl.col("previous_ts").is_not_null() & (
        pl.col("previous_ts") >= pl.col("s1") - settings.event_slack_ns)
    follows = pl.col("s2").is_not_null() & (pl.col("s2") - ts <= settings.tolerance_ns)
    reaches = (pl.col("s1") >= ts) | (
        (pl.col("e1").is_null() | (pl.col("e1") >= ts) | ~follows) & ~explained)
    used_events = (expanded.join(early, on="pair").join(late, on="pair")
                   .with_columns(pl.when(reaches).then("c1").otherwise("c2").alias("m"))
                   .filter(pl.col("m").is_not_null())
                   .sort("ts", "event")
                   .group_by("m").first()
                   .select("m", "event", pl.col("ts").alias("event_ts")))

    # Rows are a dense 0..n-1 index: scatter each finding into place instead of joining.
    n = rows.height

    def placed(name: str, at: pl.Series, values: pl.Series) -> pl.Series:
        blank = pl.select(pl.repeat(None, n, dtype=values.dtype)).to_series()
        return blank.scatter(at, values).alias(name) if at.len() else blank.alias(name)

    m_timer, m_event = used_timers["m"], used_events["m"]
    previous = placed("previous", by_start["row"], by_start["previous"])
    found = pl.DataFrame([
        rows["start"], previous,
        rows["end"].gather(previous).alias("previous_end"),
        placed("timer_cause", m_timer, used_timers["timer_cause"]),
        placed("trigger", m_timer, used_timers["trigger"]),
        placed("timer_delay", m_timer, used_timers["timer_delay"]),
        placed("timer_due", m_timer, used_timers["timer_due"]),
        placed("trigger_end", m_timer, used_timers["trigger_end"]),
        placed("event", m_event, used_events["event"]),
        placed("event_ts", m_event, used_events["event_ts"]),
    ])
    timer_wins = pl.col("timer_cause").is_not_null() & (
        pl.col("event").is_null() | (pl.col("timer_due") <= pl.col("event_ts")))
    event_wins = ~timer_wins & pl.col("event").is_not_null()
    return found.select(
        pl.when(timer_wins).then("timer_cause").when(event_wins).then(pl.lit("change"))
        .otherwise(pl.lit("unexplained")).alias("cause"),
        pl.col("previous").cast(pl.Int64),
        pl.when(timer_wins).then("trigger").cast(pl.Int64).alias("trigger"),
        pl.when(event_wins).then("event").cast(pl.Int64).alias("event"),
        pl.when(timer_wins).then("timer_delay").when(event_wins).then(pl.lit(0, pl.Int64))
        .cast(pl.Int64).alias("expected_ns"),
        pl.when(timer_wins).then(pl.col("start") - pl.col("trigger_end"))
        .when(event_wins).then(pl.col("start") - pl.col("event_ts"))
        .otherwise(pl.col("start") - pl.col("previous_end")).cast(pl.Int64).alias("actual_ns"),
    )


def _timers(keyed: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """The timer each finished call set (reconcileHandler's order: error, RequeueAfter,
    Requeue), with the object's failure count as the rate limiter kept it."""
    failed = pl.col("status").is_in(["error", "panic"])
    after = pl.col("requeue_after").fill_null(0)
    increments = failed | ((after <= 0) & pl.col("requeue").fill_null(False))
    by_end = keyed.filter(pl.col("end").is_not_null()).sort("end", "row").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("released"),
        increments.alias("inc"))
    # Failures before this release: increments since the object's last reset (Forget).
    by_end = by_end.with_columns(pl.col("inc").cast(pl.Int64).cum_sum().over("obj")
                                 .alias("inc_upto"))
    by_end = by_end.with_columns(
        pl.when(~pl.col("inc")).then("inc_upto").forward_fill().shift(1).over("obj")
        .fill_null(0).alias("inc_at_reset"))
    failures = pl.col("inc_upto") - pl.col("inc").cast(pl.Int64) - pl.col("inc_at_reset")
    backoff = pl.min_horizontal(
        pl.lit(settings.backoff_base_ns, pl.Int64)
        * pl.lit(2, pl.Int64).pow(failures.clip(0, 40)),
        pl.lit(settings.backoff_cap_ns, pl.Int64))
    slack = settings.slack_ns
    timers = by_end.with_columns(
        pl.when(failed).then(pl.lit("error-backoff"))
        .when(after > 0).then(pl.lit("requeue-after"))
        .when(pl.col("inc")).then(pl.lit("requeue")).alias("cause"),
        pl.when((after > 0) & ~failed).then(after).otherwise(backoff).alias("delay"),
    ).filter(pl.col("cause").is_not_null())
    opens = (pl.when(pl.col("cause") == "error-backoff")
             .then(pl.col("end") + settings.backoff_base_ns - slack)
             .when(pl.col("cause") == "requeue-after").then(pl.col("end") + pl.col("delay") - slack)
             .otherwise(pl.col("end") - slack))
    return timers.select(
        "obj", "row", "end", "cause", "delay", "released",
        (pl.col("end") + pl.col("delay")).alias("due"),
        pl.max_horizontal(opens, pl.col("end")).alias("opens"),
        (pl.col("end") + pl.col("delay") + settings.tolerance_ns
         + (pl.col("delay") * settings.relative).cast(pl.Int64)).alias("hi"),
    )


def _routes(events: pl.DataFrame) -> pl.DataFrame:
    """(idx: the event's row, ts, kind, namespace, name) of the objects each event can queue:
    its own, and its controller owner's (controller-runtime's Owns(): a change of an owned object
    queues the owner). Events of traces made before owners were recorded have none."""
    indexed = events.with_row_index("idx").with_columns(pl.col("idx").cast(pl.Int64))
    own = indexed.select("idx", "ts", "kind", "namespace", "name")
    if "owner_kind" not in events.columns:
        return own
    owned = indexed.filter(pl.col("owner_kind").is_not_null()).select(
        "idx", "ts", pl.col("owner_kind").alias("kind"), "namespace",
        pl.col("owner_name").alias("name"))
    return pl.concat([own, owned]).sort("ts", "idx", maintain_order=True)


def _event_objects(events: pl.DataFrame, objects: pl.DataFrame) -> pl.DataFrame:
    """Each watch event against each object (controller) it triggers: (obj, ts, event)."""
    empty = pl.DataFrame(schema={"obj": pl.UInt32, "ts": pl.Int64, "event": pl.Int64})
    if events.height == 0 or objects.height == 0:
        return empty
    functions = objects["function"].unique().drop_nulls().sort().to_list()
    routed = _routes(events)
    kinds = routed["kind"].unique().to_list()
    routes = pl.DataFrame(
        [(kind, function) for kind, targets in zip(kinds, event_functions(kinds, functions),
                                                   strict=True) for function in targets],
        schema={"kind": pl.String, "function": pl.String}, orient="row")
    indexed = routed.filter(pl.col("ts").is_not_null())
    codes = dict(zip(objects.select(pl.concat_str(OBJECT_KEY, separator="\x00"))
                     .to_series().to_list(), objects["obj"].to_list(), strict=True))
    return (indexed.join(routes, on="kind", nulls_equal=True)
            .select(pl.concat_str(OBJECT_KEY, separator="\x00")
                    .replace_strict(codes, default=None, return_dtype=pl.UInt32).alias("obj"),
                    "ts", pl.col("idx").alias("event"))
            .filter(pl.col("obj").is_not_null()))


def _objects(spans: pl.DataFrame) -> Iterator[tuple[tuple, list[int]]]:
    """(function, namespace, name) -> its rows in start order; spans with no request (native
    functions, --no-args) have no object to follow and stay unexplained."""
    rows = (spans.with_row_index("row")
            .filter(pl.col("namespace").is_not_null() & pl.col("name").is_not_null())
            .sort("start", "row")
            .group_by("function", "namespace", "name", maintain_order=True)
            .agg("row"))
    for function, namespace, name, members in rows.iter_rows():
        yield (function, namespace, name), members


def _events_by_object(spans: pl.DataFrame,
                      events: pl.DataFrame) -> dict[tuple, list[tuple[int, int]]]:
    if events.height == 0:
        return {}
    functions = [f for f in spans["function"].unique().sort().to_list() if f is not None]
    routed = _routes(events)
    kinds = routed["kind"].to_list()
    targets = dict(zip(set(kinds), event_functions(list(set(kinds)), functions), strict=True))
    out: dict[tuple, list[tuple[int, int]]] = {}
    for row, ts, kind, namespace, name in routed.select(
            "idx", "ts", "kind", "namespace", "name").iter_rows():
        if ts is None:
            continue
        for function in targets[kind]:
            out.setdefault((function, namespace, name), []).append((ts, row))
    return out


def _release(state: _Object, row: int, end: int, status: str, requeue: bool | None,
             requeue_after: int | None, settings: Settings) -> None:
    """What controller-runtime's reconcileHandler does with a result, in its order."""
    slack = settings.slack_ns
    if status in ("error", "panic"):
        delay = settings.backoff(state.failures)
        state.failures += 1
        state.timers.append(_Timer(end + delay, end + settings.backoff_base_ns - slack,
                                   end + delay + settings.late(delay), "error-backoff", row,
                                   delay))
    elif requeue_after:
        state.failures = 0  # Forget, then AddAfter
        state.timers.append(_Timer(end + requeue_after, end + requeue_after - slack,
                                   end + requeue_after + settings.late(requeue_after),
                                   "requeue-after", row, requeue_after))
    elif requeue:
        delay = settings.backoff(state.failures)  # AddRateLimited: at most this much later
        state.failures += 1
        state.timers.append(_Timer(end + delay, end - slack, end + delay + settings.late(delay),
                                   "requeue", row, delay))
    else:
        state.failures = 0


def _assign_events(events: list[tuple[int, int]], rows: list[int], start: list, end: list,
                   settings: Settings) -> dict[int, tuple[int, int]]:
    """Each event's call, by the rule in `attribute`; a call keeps its earliest event."""
    starts = [start[row] for row in rows]
    assigned: dict[int, tuple[int, int]] = {}
    previous_ts = None
    for ts, event_row in events:
        i = bisect.bisect_left(starts, ts - settings.event_slack_ns)
        if i < len(rows) and starts[i] < ts:
            after = bisect.bisect_left(starts, ts, lo=i)
            ended = end[rows[i]] is not None and end[rows[i]] < ts and after < len(rows) \
                and starts[after] - ts <= settings.tolerance_ns
            if ended or (previous_ts is not None
                         and previous_ts >= starts[i] - settings.event_slack_ns):
                # It had ended and a call follows soon, or an earlier event already
                # explains it: the next call's.
                i = after
        if i < len(rows):
            assigned.setdefault(rows[i], (ts, event_row))
        previous_ts = ts
    return assigned


def _choose(state: _Object, start: int, event: tuple[int, int] | None
            ) -> _Timer | tuple | None:
    """The trigger that made the call starting at `start`; uses up every timer due by then."""
    best: _Timer | tuple | None = None
    best_due = None
    if state.timers:
        kept = []
        for timer in state.timers:
            if start > timer.hi:
                continue  # lapsed: its call never came
            if start < timer.lo:
                kept.append(timer)  # not due yet
                continue
            if best_due is None or timer.due < best_due:
                best, best_due = timer, timer.due
        state.timers = kept
    if event is not None and (best_due is None or event[0] < best_due):
        best = event
    return best


def change_latency(frame: pl.DataFrame) -> dict | None:
    """Change-to-reconcile latency (s) over the spans a watch event caused."""
    values = frame.filter(pl.col("cause") == "change")["actual_ns"].drop_nulls()
    return latency_summary(values)


def latency_summary(values: pl.Series) -> dict | None:
    if values.len() == 0:
        return None
    ns = 1e9
    return {
        "count": values.len(),
        "mean": values.mean() / ns,
        "median": values.median() / ns,
        "p90": values.quantile(0.9, "linear") / ns,
        "max": values.max() / ns,
        "min": values.min() / ns,
    }


def summary(frame: pl.DataFrame, settings: Settings) -> dict:
    """Counts and shares of every cause (they add up to all the calls) and change latency."""
    counts = dict.fromkeys(CAUSES, 0)
    for cause, count in frame.group_by("cause").len().iter_rows():
        counts[cause] = count
    total = frame.height
    return {
        "total": total,
        "counts": counts,
        "shares": {c: (k / total if total else 0.0) for c, k in counts.items()},
        "change_latency_s": change_latency(frame),
        "settings": settings.as_dict(),
    }
