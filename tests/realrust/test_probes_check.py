"""`tracer probes check` and the compiled plan on each build of the real kube-rs operator:
what matched (the reconcile's poll, or the wrapper's poll that holds it inlined, and the end
marker), which fields the build lets the tracer decode, and nothing for error_policy or any
other closure. No cluster needed."""

from __future__ import annotations

import pytest
from helpers import run_tracer

from tracer.binary.analyze import analyze
from tracer.probes.compile import compile_plan

from .operators import BUILDS, RECONCILE

WRAPPER = ("tracing::instrument::Instrumented<futures_util::future::try_future::into_future::"
           "IntoFuture<kube_rs_operator::reconcile::")


@pytest.mark.parametrize("build", list(BUILDS))
def test_probes_check(build):
    b = BUILDS[build]
    result = run_tracer("probes", "check", str(b.binary))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "* kube-rs  probes/kube-rs.toml: 1 reconcile function(s), 1 step/end function(s)" \
        in out, out
    lines = out.splitlines()
    reconcile = next(line.split(None, 1)[1] for line in lines
                     if line.startswith("    reconcile ") and "none match" not in line)
    end = next(line.split(None, 1)[1] for line in lines if line.startswith("    end "))
    body = "{closure#0}" if b.mangling == "v0" else "{{closure}}"
    if b.dwarf:
        # The body has a function of its own: its poll, and its drop glue.
        assert reconcile == f"kube_rs_operator::reconcile::{body}"
        assert end.endswith(f"<kube_rs_operator::reconcile::{body}>")
    elif b.mangling == "v0":
        # Inlined into the wrapper kube-runtime spawns: its poll and its Drop impl, named
        # with their type.
        assert reconcile == f"<{WRAPPER}{body}>> as core::future::future::Future>::poll"
        assert end == f"<{WRAPPER}{body}>> as core::ops::drop::Drop>::drop"
    else:
        # Legacy names do not say which instance of the generic wrapper a function is: the
        # one the call graph confirms.
        assert reconcile == ("<tracing::instrument::Instrumented<T> as "
                             "core::future::future::Future>::poll")
        assert end.endswith("<impl core::ops::drop::Drop for "
                            "tracing::instrument::Instrumented<T>>::drop")
    note = next(line for line in lines if line.startswith(f"    note: {RECONCILE}: async"))
    if b.dwarf:
        assert "Ok/Err read from DWARF; the requeue too" in note
        assert "no error message" in note and "namespace/name read" in note
    else:
        assert "no DWARF: Ok/Err, the requeue, the error and the object are not read" in note
        assert "polled through" in note


@pytest.mark.parametrize("build", list(BUILDS))
def test_plan_has_no_other_closure(build):
    info = analyze(str(BUILDS[build].binary))
    plan = compile_plan(info)
    assert plan.probe == "kube-rs" and plan.functions == [RECONCILE]
    assert {p.function for p in plan.points} == {RECONCILE}
    assert {p.role for p in plan.points} == {"poll", "poll-exit", "drop"}
    assert len([p for p in plan.points if p.role == "poll"]) == 1
    assert len([p for p in plan.points if p.role == "drop"]) == 1
    hit = {info.function_at(p.addr).name for p in plan.points}
    assert not any("error_policy" in name for name in hit)
    assert bool(plan.rust_results) == BUILDS[build].dwarf
