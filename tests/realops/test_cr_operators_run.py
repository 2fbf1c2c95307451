"""The real controller-runtime operators (four builds of samples/cr-operator) run against the
real kube-apiserver 1.20 and write a ground truth that says what they did: every object of the
workload reconciled, each result field and error kind seen, a real 409 Conflict from the API
server with its real message, Priority in the v0.25 builds and null in the v0.18 ones. No tracer.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from elftools.elf.elffile import ELFFile
from helpers import wait_until
from kubernetes import client

from .operators import (
    CR_BUILDS,
    ERROR_KINDS,
    LABELED_CONFIGMAP,
    MEMCACHED,
    RECONCILE_FUNCTIONS,
    SUB_RECONCILERS,
    churn,
    drive_workload,
    expected_outcome,
    outcome_of,
)


def symbols(path) -> set[str]:
    with open(path, "rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        return {s.name for s in table.iter_symbols()} if table else set()


@pytest.mark.parametrize("build", list(CR_BUILDS))
def test_operator_reconciles_for_real(build, realops_cluster, cr_namespace, cr_operator):
    b = CR_BUILDS[build]
    t_start = time.monotonic_ns()
    op = cr_operator(build, namespace=cr_namespace)
    api = realops_cluster.api_client

    header = op.header()
    assert header["pid"] == op.pid
    assert header["modules"]["sigs.k8s.io/controller-runtime"] == b.controller_runtime
    assert header["modules"]["k8s.io/client-go"] == b.client_go
    assert header["result_fields"] == (["Requeue", "RequeueAfter", "Priority"] if b.has_priority
                                       else ["Requeue", "RequeueAfter"])
    assert header["workers"] == 4

    # Leader election: the Lease (coordination.k8s.io/v1) is held in the namespace given.
    lease = client.CoordinationV1Api(api).read_namespaced_lease(
        "cr-operator.cache.example.com", cr_namespace)
    assert lease.spec.holder_identity

    w = drive_workload(api, cr_namespace, op, has_priority=b.has_priority)
    records = op.records()

    # Every object reconciled for real, by its own controller, through the right function.
    by_name = {}
    for r in records:
        by_name.setdefault(r["name"], []).append(r)
        assert r["namespace"] == cr_namespace
        assert r["function"] == RECONCILE_FUNCTIONS[r["controller"]], r
        assert r["function"] not in SUB_RECONCILERS
        assert t_start < r["entry_ns"] <= r["exit_ns"] < time.monotonic_ns(), r
        assert r["goroutine"] > 0
        if not b.has_priority:
            assert r["priority"] is None, r
    for p in w.plan:
        assert {r["controller"] for r in by_name.get(p.name, [])} == {p.controller}, p.name
        # While it existed with its planned spec, the planned result and error.
        created = [r for r in by_name[p.name] if w.created_ns < r["entry_ns"] < w.changed_ns]
        assert expected_outcome(p, cr_namespace, b.has_priority) in map(outcome_of, created), \
            (p, created[:3])

    # Each error kind at least once per controller that was asked for it, with its exact type and
    # message; the conflict is the API server's own 409.
    seen = Counter((r["controller"], r["error"]["type"], r["error"]["message"])
                   for r in records if r["error"])
    for p in w.plan:
        if p.fail_with:
            e = expected_outcome(p, cr_namespace, b.has_priority)["error"]
            assert seen[(p.controller, e["type"], e["message"])] >= 1, p
    assert {p.fail_with for p in w.plan if p.controller == MEMCACHED} >= set(ERROR_KINDS)
    conflicts = [r for r in records if r["error"] and "the object has been modified"
                 in r["error"]["message"]]
    assert {r["controller"] for r in conflicts} == {MEMCACHED, LABELED_CONFIGMAP}
    assert all(r["error"]["type"] == "*errors.StatusError" for r in conflicts)

    # Priority: recorded where the Result has it (planned 7 and 3), null in v0.18.
    priorities = {r["priority"] for r in records}
    assert priorities == ({None, 7, 3} if b.has_priority else {None})

    # Several workers: reconciles ran on more than one goroutine.
    assert len({r["goroutine"] for r in records}) > 1

    # Events were written (events.k8s.io/v1 in v0.25, core/v1 in v0.18; the same store).
    def created_events():
        events = client.CoreV1Api(api).list_namespaced_event(cr_namespace).items
        return [e for e in events if e.reason == "ConfigMapCreated"]

    wait_until(created_events, 10, "a ConfigMapCreated event")

    # SIGTERM: the ground truth ends with the count of records, flushed.
    assert op.stop() == 0, op.stderr()[-3000:]
    end = op.end()
    assert end == {"end": True, "signal": "terminated", "calls": len(op.records())}

    if not b.stripped:
        names = symbols(op.argv[0])
        assert set(RECONCILE_FUNCTIONS.values()) <= names
        assert set(SUB_RECONCILERS) <= names
    else:
        assert symbols(op.argv[0]) == set()


def test_churn_keeps_a_steady_rate(realops_cluster, cr_namespace, cr_operator):
    """churn(): changes at a steady rate; every change is followed by reconciles of its object,
    errors keep their kind."""
    op = cr_operator("cr-operator", namespace=cr_namespace)
    w = churn(realops_cluster.api_client, cr_namespace, seconds=3, per_second=20)
    wait_until(lambda: any(r["entry_ns"] > w.deleted_ns for r in op.records()), 10,
               "a reconcile after the deletes")
    op.stop()
    records = op.records()
    updates = [a for a in w.actions if a.verb == "update"]
    assert 50 <= len(updates) <= 61
    in_window = [r for r in records if w.changed_ns < r["entry_ns"] < w.deleted_ns]
    assert len(in_window) >= len(updates)
    for p in w.plan:
        mine = [r for r in in_window if r["name"] == p.name]
        assert mine, p.name
        assert expected_outcome(p, cr_namespace, True) in map(outcome_of, mine), p
