"""Where a wrapper future keeps its inlined async body's state (tracer.binary.async_state), on
the real kube-rs operator's release builds (no DWARF): kube-runtime's
`Instrumented<IntoFuture<reconcile::{closure#0}>>`, its poll dispatching on the byte and its
Drop handing the body to the body's drop glue; the plan reads it at each poll and at the drop.
Where the facts are missing (the in-house sample's wrapper drops no body), no state."""

from __future__ import annotations

import pytest
from helpers import sample

from tracer.binary import async_state
from tracer.binary.analyze import analyze
from tracer.probes.compile import compile_plan
from tracer.probes.plan import DROP, POLL, POLL_EXIT


def _plan(rel: str):
    info = analyze(str(sample(rel)))
    return info, compile_plan(info)


@pytest.mark.parametrize("build", ["release", "release-legacy"])
def test_the_wrappers_poll_and_drop_agree_on_the_state(build):
    info, plan = _plan(f"rust/kube-rs-operator-{build}")
    roles = {p.role: p for p in plan.points}
    # Instrumented<..> is 0x28 bytes of span, then the body, whose state is at +0x8a (the
    # debug build's DWARF says so of the body: tests/realrust), so +0xb2 from the wrapper.
    assert roles[POLL].decode == "rust-poll:178:1"
    assert {p.decode for p in plan.points if p.role == POLL_EXIT} == \
        {"rust-poll-exit:178:1:0:r"}
    assert roles[DROP].decode == "rust-drop:178:1:4"
    poll = info.function_at(roles[POLL].addr)
    drop = info.function_at(roles[DROP].addr)
    found = async_state.poll_dispatch(info, poll, "rsi")
    assert not isinstance(found, str) and found[0] == 0xB2 and len(found[1]) == 4
    assert async_state.drop_handoff(info, drop, lambda n: "IntoFuture<" in n
                                    and "reconcile::" in n) == (0x28, 0x8A)
    # What the poll writes: 1 when the body completed, 3 at its await, 2 (a word store of
    # 0x200 at +0xb1) in the landing pad of a panic.
    assert async_state.written_values(info, poll, "rsi", 0xB2) == {1, 2, 3}
    note = next(n for n in plan.notes if n.startswith("kube_rs_operator::reconcile: async"))
    assert "state at +0xb2" in note and "status completed, cancelled" in note


def test_the_debug_builds_dwarf_puts_the_bodys_state_where_the_glue_reads_it():
    # The body's own poll in the debug build: DWARF's __state at +0x8a, the +Y the release
    # builds' drop glue reads.
    _info, plan = _plan("rust/kube-rs-operator-debug")
    assert [p.decode for p in plan.points if p.role == POLL] == ["rust-poll:138:1"]


def test_disagreeing_facts_give_no_state(monkeypatch):
    info, plan = _plan("rust/kube-rs-operator-release")
    roles = {p.role: p for p in plan.points}
    poll, drop = info.function_at(roles[POLL].addr), info.function_at(roles[DROP].addr)
    body = lambda n: "IntoFuture<" in n and "reconcile::" in n  # noqa: E731
    assert isinstance(async_state.body_state(info, poll, drop, "rsi", body),
                      async_state.BodyState)
    monkeypatch.setattr(async_state, "drop_handoff", lambda *a, **k: (0x30, 0x8A))
    why = async_state.body_state(info, poll, drop, "rsi", body)
    assert why == "its poll dispatches on +0xb2 but its drop's glue reads +0x30 + 0x8a: " \
        "they disagree"
    # The wrong `self` register: no dispatch on a byte of it.
    assert isinstance(async_state.poll_dispatch(info, poll, "rdx"), str)


def test_a_wrapper_without_the_facts_has_no_state():
    # rust-operator-instrumented: its Instrumented's drop glue drops no body, so the poll's
    # dispatch is not confirmed: the drop ends the span, with no status.
    _info, plan = _plan("rust/rust-operator-instrumented")
    assert [p.decode for p in plan.points if p.role == DROP] == [None]
    note = next(n for n in plan.notes if n.startswith("rust_operator::reconcile: async"))
    assert "not read: its drop hands the body to no drop glue" in note
    assert "status null" in note
