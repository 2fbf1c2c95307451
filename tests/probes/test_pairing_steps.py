"""The pairer's child-span rules on hand-written hit sequences (the cases a real sample does
not produce on demand: a step outside any reconcile, an end marker, a panic in a step)."""

from __future__ import annotations

from tracer.probes.plan import (
    ENTRY,
    EXIT,
    KEY_GOID,
    PANIC,
    RECOVERY,
    SPAN_END,
    SPAN_RECONCILE,
    SPAN_STEP,
    Plan,
    Point,
)
from tracer.session.pairing import Hit, Pairer

POINTS = [
    Point(0x10, "R", ENTRY, KEY_GOID, None, SPAN_RECONCILE),
    Point(0x18, "R", EXIT, KEY_GOID, None, SPAN_RECONCILE),
    Point(0x20, "A", ENTRY, KEY_GOID, None, SPAN_STEP),
    Point(0x28, "A", EXIT, KEY_GOID, None, SPAN_STEP),
    Point(0x30, "B", ENTRY, KEY_GOID, None, SPAN_STEP),
    Point(0x38, "B", EXIT, KEY_GOID, None, SPAN_STEP),
    Point(0x40, "Done", ENTRY, KEY_GOID, None, SPAN_END),
    Point(0x50, "runtime.gopanic", PANIC, KEY_GOID, None),
    Point(0x60, "runtime.recovery", RECOVERY, KEY_GOID, None),
]
INDEX = {(p.function, p.role): i for i, p in enumerate(POINTS)}


def run(hits: list[tuple[int, str, str, int, int]]) -> tuple[list[dict], Pairer]:
    """hits: (ts, function, role, goroutine, sp)."""
    spans: list[dict] = []
    pairer = Pairer(Plan("b", "go", "p", ["R", "A", "B"], POINTS), spans.append)
    for ts, function, role, goid, sp in hits:
        i = INDEX[(function, role)]
        pairer.feed(Hit(ts, POINTS[i], i, 1, goid, sp, None))
    pairer.close_all()
    return spans, pairer


def by_function(spans: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for span in spans:
        out.setdefault(span["function"], []).append(span)
    return out


def test_nested_steps_name_their_reconcile_and_caller():
    spans, pairer = run([
        (100, "R", ENTRY, 7, 900), (110, "A", ENTRY, 7, 800), (120, "B", ENTRY, 7, 700),
        (130, "B", EXIT, 7, 700), (140, "A", EXIT, 7, 800), (150, "B", ENTRY, 7, 800),
        (160, "B", EXIT, 7, 800), (200, "R", EXIT, 7, 900),
    ])
    f = by_function(spans)
    [r], [a], (b1, b2) = f["R"], f["A"], sorted(f["B"], key=lambda s: s["start_ns"])
    assert "parent" not in r and r["id"] < a["id"] < b1["id"] < b2["id"]  # ids by start
    assert (a["parent"], a["depth"], a.get("caller")) == (r["id"], 1, None)
    assert (b1["parent"], b1["depth"], b1["caller"]) == (r["id"], 2, a["id"])
    assert (b2["parent"], b2["depth"], b2.get("caller")) == (r["id"], 1, None)
    assert pairer.stats.steps == 3 and pairer.stats.spans == 4


def test_a_step_outside_a_reconcile_is_not_recorded():
    spans, pairer = run([
        (100, "A", ENTRY, 7, 800), (110, "A", EXIT, 7, 800),  # no reconcile open
        (120, "R", ENTRY, 8, 900), (130, "A", ENTRY, 7, 800),  # one open, on another key
        (140, "A", EXIT, 7, 800), (150, "R", EXIT, 8, 900),
    ])
    assert [s["function"] for s in spans] == ["R"]
    assert pairer.stats.steps_outside == 2 and pairer.stats.orphan_exits == 0


def test_an_end_marker_ends_the_reconcile_and_its_open_steps():
    spans, pairer = run([
        (100, "R", ENTRY, 7, 900), (110, "A", ENTRY, 7, 800), (150, "Done", ENTRY, 7, 600),
        (160, "R", ENTRY, 7, 900), (170, "R", EXIT, 7, 900),
    ])
    f = by_function(spans)
    first = min(f["R"], key=lambda s: s["start_ns"])
    assert (first["end_ns"], first["status"]) == (150, "ok")
    assert f["A"][0]["end_ns"] == 150 and f["A"][0]["parent"] == first["id"]
    assert "Done" not in f and pairer.stats.ended_by_marker == 1
    assert len(f["R"]) == 2 and pairer.in_flight == {"R": 0, "A": 0}


def test_a_step_that_panicked_ends_at_its_recovery():
    """The step panics, the reconcile recovers it and returns: the step ends at the
    recovery, marked panic; the reconcile returns normally."""
    spans, _ = run([
        (100, "R", ENTRY, 7, 900), (110, "A", ENTRY, 7, 800), (120, "runtime.gopanic",
                                                                PANIC, 7, 700),
        (130, "runtime.recovery", RECOVERY, 7, 600), (140, "R", EXIT, 7, 900),
    ])
    f = by_function(spans)
    assert f["A"][0]["end_ns"] == 130 and f["A"][0]["status"] == "panic"
    assert f["R"][0]["end_ns"] == 140 and f["R"][0]["status"] == "ok"
