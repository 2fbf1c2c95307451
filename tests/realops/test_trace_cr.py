"""The tracer on the real controller-runtime operators (samples/cr-operator: v0.25.3, whose
Result has Priority, and v0.18.7; with DWARF and stripped), against a real API server: every
reconcile the operator records in the window is in the trace exactly once, with its request,
result and error as the operator returned them; the sub-reconcilers named Reconcile are not
traced. Ground truth: the operator's own record of each reconcile."""

from __future__ import annotations

import time

import pytest
from helpers import interrupt, run_tracer, wait_for_header

from .operators import (
    CR_BUILDS,
    ERROR_KINDS,
    SUB_RECONCILERS,
    check_span,
    default_plan,
    drive_workload,
    match,
    secret_plan,
)

MEMCACHED_RECONCILE = "example.com/cr-operator/internal/controller.(*MemcachedReconciler).Reconcile"
# An ObjectReconciler: Reconcile(ctx, *corev1.Secret), the request read from the object.
SECRET_RECONCILE = "example.com/cr-operator/internal/controller.(*SecretReconciler).Reconcile"
# reconcile.Func's method: generic since v0.18 (TypedFunc), so named by its instance.
FUNC_RECONCILE = {
    "v0.25.3": ("sigs.k8s.io/controller-runtime/pkg/reconcile.TypedFunc"
                "[sigs.k8s.io/controller-runtime/pkg/reconcile.Request].Reconcile"),
    "v0.18.7": "sigs.k8s.io/controller-runtime/pkg/reconcile.Func.Reconcile",
}


def traced_workload(build: str, backend: str, cr_operator, cr_namespace, realops_cluster,
                    tracer_cmd, tmp_path):
    """The operator traced while the workload creates, changes and deletes its objects:
    (ground-truth records inside the window, spans, header, end)."""
    op = cr_operator(build, cr_namespace)
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--output", str(trace), "--quiet",
                     "--backend", backend, "--max-stopped", "off")
    header = wait_for_header(trace, run)
    opened = time.monotonic_ns()
    drive_workload(realops_cluster.api_client, cr_namespace, operator=op,
                   plan=default_plan() + secret_plan(),
                   has_priority=CR_BUILDS[build].has_priority)
    time.sleep(0.5)
    closed = time.monotonic_ns()
    records = interrupt(run, trace)
    end = records[-1]
    # Calls wholly inside the window; the spans of calls begun before its end.
    truth = [r for r in op.records() if opened <= r["entry_ns"] and r["exit_ns"] <= closed]
    spans = [r for r in records if r["type"] == "span" and r["start_ns"] <= closed
             and (r["end_ns"] or 0) >= opened]
    return truth, spans, header, end, opened, closed


@pytest.mark.parametrize(("build", "backend"), [
    *((build, backend) for build in CR_BUILDS for backend in ("gdb", "uprobe")),
    # Delve reads DWARF: the builds that have it.
    *((build, "dlv") for build in CR_BUILDS if not CR_BUILDS[build].stripped),
])
def test_every_reconcile_once_with_its_fields(build, backend, cr_operator, cr_namespace,
                                               realops_cluster, tracer_cmd, tmp_path):
    truth, spans, header, end, opened, closed = traced_workload(
        build, backend, cr_operator, cr_namespace, realops_cluster, tracer_cmd, tmp_path)
    has_priority = CR_BUILDS[build].has_priority
    functions = [MEMCACHED_RECONCILE, SECRET_RECONCILE,
                 FUNC_RECONCILE[CR_BUILDS[build].controller_runtime]]
    assert header["probe"] == "controller-runtime"
    assert sorted(header["functions"]) == sorted(functions)
    assert not set(SUB_RECONCILERS) & set(header["functions"])
    layout = "Requeue, RequeueAfter, Priority" if has_priority else "Requeue, RequeueAfter"
    assert any(f"Result {{{layout}}}" in note for note in header["notes"]), header["notes"]
    # What the workload asked for happened, so the comparison covers it.
    kinds = {(c["error"] or {}).get("type") for c in truth}
    assert {"*errors.StatusError", "*errors.errorString", "*fmt.wrapError",
            "*controller.agentError"} <= kinds, kinds
    assert len(ERROR_KINDS) == 5
    assert any(c["requeue"] for c in truth) and any(c["requeue_after_ns"] for c in truth)
    assert any(c["priority"] is not None for c in truth) == has_priority
    assert {c["controller"] for c in truth} == {"memcached", "labeled-configmap",
                                                "labeled-secret"}

    matched = match(truth, spans, opened, closed)
    for i, call in enumerate(truth):
        check_span(call, matched[i], has_priority)
    assert all(s["function"] in functions for s in spans)
    if backend == "uprobe":
        assert not any(end["events_lost"].values()), end["events_lost"]


@pytest.mark.parametrize("build", ["cr-operator", "cr-operator-v018-stripped"])
def test_probes_check_names_the_layout(build):
    """`tracer probes check` says which probe matched, which functions it traces and which
    fields it decodes, and which methods named Reconcile it leaves out."""
    got = run_tracer("probes", "check", str(CR_BUILDS[build].binary))
    assert got.returncode == 0, got.stderr
    out = got.stdout
    assert "* controller-runtime" in out
    layout = "Requeue, RequeueAfter, Priority" if CR_BUILDS[build].has_priority else \
        "Requeue, RequeueAfter"
    assert f"Result {{{layout}}}" in out
    result = "requeue, requeue_after_ns, error, priority (cr-result-priority)" \
        if CR_BUILDS[build].has_priority else "requeue, requeue_after_ns, error (cr-result)"
    assert f"entry: namespace, name (cr-request); return: {result}" in out
    for sub in SUB_RECONCILERS:
        assert f"note: {sub} is never called through an interface" in out
