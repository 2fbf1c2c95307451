"""Cause attribution on traces written by hand (with watch-event lines), on random traces
(the join-based attribution against the plain sequential one), and on a simulated
controller-runtime queue that knows why it ran each call."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from polars.testing import assert_frame_equal
from report_support import (
    CLOCK,
    FUNCTION,
    MS,
    S,
    event,
    invoke,
    report_json,
    span,
    write_trace,
)

from tracer.analysis.causes import CAUSES, Settings, attribute, attribute_sequential
from tracer.analysis.load import load
from tracer.analysis.synthetic import write_trace as simulate

T0 = CLOCK["monotonic_ns"] + S
BACKUP = "example.com/op/controllers.(*BackupReconciler).Reconcile"
IMPLEMENTATIONS = {"joins": attribute, "sequential": attribute_sequential}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def causes_of(request, tmp_path):
    """Write the records as a trace, attribute, return {span id: cause row}."""
    impl = IMPLEMENTATIONS[request.param]

    def run(records: list[dict], settings: Settings | None = None) -> dict[int, dict]:
        loaded = load([str(write_trace(tmp_path / "t.jsonl", records))])
        found = impl(loaded.spans, loaded.events, settings or Settings())
        ids = loaded.spans["id"].to_list()
        out = {}
        for i, row in zip(ids, found.iter_rows(named=True), strict=True):
            row["previous"] = None if row["previous"] is None else ids[row["previous"]]
            row["trigger"] = None if row["trigger"] is None else ids[row["trigger"]]
            out[i] = row
        assert len(out) == sum(r["type"] == "span" for r in records)  # none dropped
        return out

    return run


def test_requeue_after(causes_of):
    c = causes_of([span(1, T0, T0 + MS, after=5 * S), span(2, T0 + MS + 5 * S + 2 * MS,
                                                            T0 + 5 * S + 4 * MS)])
    assert c[1]["cause"] == "unexplained" and c[1]["previous"] is None
    assert c[2]["cause"] == "requeue-after"
    assert (c[2]["previous"], c[2]["trigger"]) == (1, 1)
    assert (c[2]["expected_ns"], c[2]["actual_ns"]) == (5 * S, 5 * S + 2 * MS)


def test_requeue_starts_soon_after(causes_of):
    c = causes_of([span(1, T0, T0 + MS, requeue=True), span(2, T0 + 2_500_000, T0 + 3 * MS)])
    assert c[2]["cause"] == "requeue" and c[2]["trigger"] == 1
    # At most the rate limiter's first backoff (5 ms) after the call returned.
    assert (c[2]["expected_ns"], c[2]["actual_ns"]) == (5 * MS, 1_500_000)


def test_error_backoff_doubles_per_failure_and_resets_on_success(causes_of):
    records = [span(1, T0, T0 + MS, error="*errors.errorString")]
    t = T0 + MS + 5 * MS + 200_000
    records.append(span(2, t, t + MS, panic=True))  # 2nd failure in a row
    t += MS + 10 * MS + 300_000
    records.append(span(3, t, t + MS))  # ok: Forget
    t += 50 * MS
    records.append(span(4, t, t + MS, error="*fmt.wrapError"))
    records.append(span(5, t + MS + 5 * MS + 100_000, t + 7 * MS))
    c = causes_of(records)
    assert [c[i]["cause"] for i in (2, 3, 5)] == ["error-backoff"] * 3
    assert [c[i]["expected_ns"] for i in (2, 3, 5)] == [5 * MS, 10 * MS, 5 * MS]
    assert c[4]["cause"] == "unexplained"


def test_backoff_cap(causes_of):
    records, t = [], T0
    for i in range(1, 7):  # 5, 10, 20, 40, 80 ms, then capped at 100 ms
        records.append(span(i, t, t + MS, error="*errors.errorString"))
        t += MS + min(5 * MS * 2 ** (i - 1), 100 * MS) + 200_000
    records.append(span(7, t, t + MS))
    c = causes_of(records, Settings(backoff_cap_ns=100 * MS))
    assert [c[i]["expected_ns"] for i in range(2, 8)] == [5 * MS, 10 * MS, 20 * MS, 40 * MS,
                                                          80 * MS, 100 * MS]
    assert all(c[i]["cause"] == "error-backoff" for i in range(2, 8))


def test_change_and_its_latency(causes_of):
    records = [event(T0, version=1), span(1, T0 + 3 * MS, T0 + 4 * MS),
               event(T0 + 10 * MS, version=2), event(T0 + 11 * MS, version=3),
               span(2, T0 + 12 * MS, T0 + 13 * MS),  # both events: one reconcile
               span(3, T0 + 900 * MS, T0 + 901 * MS)]
    c = causes_of(records)
    assert c[1]["cause"] == "change" and c[1]["actual_ns"] == 3 * MS
    assert c[2]["cause"] == "change" and c[2]["actual_ns"] == 2 * MS  # from the first event
    assert c[3]["cause"] == "unexplained" and c[3]["previous"] == 2


def test_an_event_stamped_while_its_call_runs_is_its_cause(causes_of):
    # The tracer's watch hears a change a few ms after the operator's own did: a call already
    # running when the event is stamped (within the event slack) is the event's call; one
    # that had ended by then is not, the next call is.
    records = [span(1, T0, T0 + 5 * MS), event(T0 + 3 * MS),
               span(2, T0 + 20 * MS, T0 + 21 * MS), event(T0 + 22 * MS),
               span(3, T0 + 30 * MS, T0 + 31 * MS)]
    c = causes_of(records)
    assert c[1]["cause"] == "change" and c[1]["actual_ns"] == -3 * MS
    assert c[2]["cause"] == "unexplained"  # the second event came after it had ended
    assert c[3]["cause"] == "change" and c[3]["actual_ns"] == 8 * MS


def test_a_timer_not_due_yet_waits_for_a_later_call(causes_of):
    records = [span(1, T0, T0 + MS, error="*errors.errorString"),
               event(T0 + 2 * MS), span(2, T0 + 2_100_000, T0 + 2_500_000),
               span(3, T0 + 6_300_000, T0 + 7 * MS)]
    c = causes_of(records)
    assert c[2]["cause"] == "change"
    assert c[3]["cause"] == "error-backoff" and c[3]["trigger"] == 1
    assert c[3]["previous"] == 2


def test_a_lapsed_timer_explains_nothing(causes_of):
    c = causes_of([span(1, T0, T0 + MS, after=S), span(2, T0 + 5 * S, T0 + 5 * S + MS)])
    assert c[2]["cause"] == "unexplained"
    assert c[2]["actual_ns"] == 5 * S - MS  # since the previous call ended


def test_the_earliest_trigger_wins_and_the_queue_merges_the_rest(causes_of):
    records = [span(1, T0, T0 + MS, after=10 * MS), event(T0 + 5 * MS),
               span(2, T0 + 12 * MS, T0 + 13 * MS), span(3, T0 + 24 * MS, T0 + 25 * MS)]
    c = causes_of(records)
    assert c[2]["cause"] == "change"  # the event (5 ms) came before the timer (11 ms)
    assert c[3]["cause"] == "unexplained"  # the timer was merged into call 2


def test_events_reach_the_controller_of_their_kind(causes_of):
    records = [event(T0, kind="Backup"),
               span(1, T0 + MS, T0 + 2 * MS, function=FUNCTION),
               span(2, T0 + MS, T0 + 2 * MS, function=BACKUP, goroutine=8)]
    c = causes_of(records)
    assert c[1]["cause"] == "unexplained" and c[2]["cause"] == "change"


def test_calls_without_a_request_and_unfinished_calls_are_kept(causes_of):
    no_request = span(1, T0, T0 + MS)
    no_request["request"] = None
    records = [no_request, span(2, T0, T0 + MS, after=MS), span(3, T0 + 2_500_000, None),
               span(4, T0 + 3 * MS, T0 + 4 * MS)]
    c = causes_of(records)
    assert c[1]["cause"] == "unexplained" and c[1]["previous"] is None
    assert c[3]["cause"] == "requeue-after"
    assert c[4]["previous"] == 3 and c[4]["actual_ns"] is None  # 3 never ended


def random_records(seed: int) -> list[dict]:
    """Overlapping calls, equal start times, unfinished calls, events of known, unknown and
    no kind: the cases where a shortcut would part from the rules."""
    rng = random.Random(seed)
    records, t = [], T0
    for i in range(1, 400):
        t += rng.choice([0, 0, 50_000, 500_000, 2 * MS, 6 * MS, 40 * MS])
        kind = rng.random()
        end = None if rng.random() < 0.02 else t + rng.randrange(1, 8 * MS)
        records.append(span(
            i, t, end, name=rng.choice("abc"), function=rng.choice([FUNCTION, BACKUP]),
            requeue=kind < 0.2, after=rng.choice([0, 0, MS, 5 * MS]) if kind < 0.4 else 0,
            error="*errors.errorString" if 0.4 <= kind < 0.55 else None,
            panic=0.55 <= kind < 0.6))
        if rng.random() < 0.3:
            records.append(event(t + rng.randrange(-3 * MS, 3 * MS), name=rng.choice("abc"),
                                 kind=rng.choice(["Memcached", "Backup", "Other", None])))
    return records


@pytest.mark.parametrize("seed", range(8))
def test_joins_agree_with_the_sequential_rules(tmp_path, seed):
    loaded = load([str(write_trace(tmp_path / "r.jsonl", random_records(seed)))])
    settings = Settings(tolerance_ns=2 * MS)
    fast = attribute(loaded.spans, loaded.events, settings)
    assert_frame_equal(fast, attribute_sequential(loaded.spans, loaded.events, settings))
    assert set(fast["cause"].unique()) >= {"change", "error-backoff", "unexplained"}


def test_a_simulated_controller_runtime_queue(tmp_path):
    """The simulator runs controller-runtime's queue (merging, per-object backoff, timers,
    watch events, some of them missing from the trace) and records why each call ran."""
    path = tmp_path / "sim.jsonl"
    truth = simulate(str(path), 20_000, objects=60, seed=7)
    loaded = load([str(path)])
    found = attribute(loaded.spans, loaded.events)
    pairs = Counter(zip([truth[i] for i in loaded.spans["id"].to_list()],
                        found["cause"].to_list(), strict=True))
    right = sum(n for (want, got), n in pairs.items() if want == got)
    assert sum(pairs.values()) == loaded.spans.height
    assert {want for want, _ in pairs} == set(CAUSES)
    assert right / loaded.spans.height >= 0.99, pairs


def test_report_shares_add_up_and_causes_out_has_the_evidence(tmp_path):
    records = [event(T0), span(1, T0 + MS, T0 + 2 * MS, after=10 * MS),
               span(2, T0 + 12_500_000, T0 + 13 * MS, error="*errors.errorString"),
               span(3, T0 + 18_200_000, T0 + 19 * MS, requeue=True),
               span(4, T0 + 20 * MS, T0 + 21 * MS), span(5, T0 + 3 * S, T0 + 3 * S + MS)]
    trace = write_trace(tmp_path / "t.jsonl", records)
    out = tmp_path / "causes.jsonl"
    report = report_json(str(trace), "--causes-out", str(out))
    causes = report["causes"]
    assert causes["total"] == report["total"]["calls"] == 5
    assert sum(causes["counts"].values()) == 5
    assert sum(causes["shares"].values()) == pytest.approx(1.0)
    assert causes["counts"] == {"requeue-after": 1, "requeue": 1, "error-backoff": 1,
                                "change": 1, "unexplained": 1}
    assert causes["change_latency_s"]["mean"] == pytest.approx(0.001)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [1, 2, 3, 4, 5]
    assert [line["cause"] for line in lines] == ["change", "requeue-after", "error-backoff",
                                                 "requeue", "unexplained"]
    assert lines[0]["event"]["event"] == "MODIFIED" and lines[0]["previous_id"] is None
    assert lines[1]["trigger_id"] == 1 and lines[1]["expected_delay_s"] == pytest.approx(0.01)
    assert lines[1]["actual_delay_s"] == pytest.approx(0.0105)
    assert report["objects"][0]["causes"] == {k: v for k, v in causes["counts"].items() if v}


def test_timestamps_files_have_no_causes_to_write(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("2023-05-12 11:52:20.338366696\n2023-05-12 11:52:23.396371559\n")
    result = invoke(str(path), "--causes-out", str(tmp_path / "c.jsonl"))
    assert "timestamps files have no causes" in str(result.exception)


def test_causes_frame_is_aligned_with_spans(tmp_path):
    records = random_records(99)
    loaded = load([str(write_trace(tmp_path / "r.jsonl", records))])
    found = attribute(loaded.spans, loaded.events)
    assert found.height == loaded.spans.height
    assert found["cause"].null_count() == 0
    assert set(found["cause"].unique()) <= set(CAUSES)
