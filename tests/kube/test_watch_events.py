"""Watch events: objects changed while tracing appear in the trace, and the report's
change-to-reconcile latency is what the test measured between its changes and the
operator's own reconcile entries."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time

from helpers import read_lines, run_tracer, wait_for_header, wait_until
from kubernetes import client

NAMESPACE = "watched"


def test_changes_during_a_run_are_events_tied_to_their_reconciles(kube_cluster, kube,
                                                                  tracer_cmd, tmp_path):
    kube.namespace(NAMESPACE)
    token = tmp_path / "token"
    token.write_text(kube_cluster.admin_token)
    url = f"{kube_cluster.server}/api/v1/namespaces/{NAMESPACE}/configmaps?watch=1"
    # A real operator: it reconciles each configmap when its watch says it changed.
    pod = kube.pod("op-watch", args=["-kube-watch", url, "-kube-token", str(token),
                                     "-work-us", "2000"])
    pod.start_work()
    wait_until(lambda: "watching" in pod.operator.stderr(), 20, "the operator's watch")

    trace = tmp_path / "watch.jsonl"
    run = tracer_cmd("attach", pod.name, "--watch", "configmaps", "-q", "-o", str(trace),
                     "--kubeconfig", str(kube_cluster.kubeconfig))
    wait_for_header(trace, run)
    time.sleep(0.5)  # the tracer's watch is running once its list is done; give it a moment

    changes = []  # (name, event, before_ns, after_ns)
    for i in range(6):
        name = f"cm-{i}"
        before = time.monotonic_ns()
        kube.core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": name},
                                                           "data": {"v": "0"}})
        changes.append((name, "ADDED", before, time.monotonic_ns()))
        time.sleep(0.15)
        before = time.monotonic_ns()
        kube.core.patch_namespaced_config_map(name, NAMESPACE, {"data": {"v": "1"}})
        changes.append((name, "MODIFIED", before, time.monotonic_ns()))
        time.sleep(0.15)
    wait_until(lambda: sum(r["type"] == "span" for r in read_lines(trace)) >= len(changes),
               20, "a span per change")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    pod.operator.stop()  # an endless operator: its ground truth is whole once it exits

    lines = read_lines(trace)
    assert lines[0]["type"] == "header"
    events = [r for r in lines if r["type"] == "event"]
    assert [(e["name"], e["event"]) for e in events] == [(c[0], c[1]) for c in changes]
    for event, (_, _, before, _) in zip(events, changes, strict=True):
        assert event["kind"] == "ConfigMap" and event["namespace"] == NAMESPACE
        assert event["resource_version"] and event["ts_ns"] >= before
        assert event["generation"] is None  # configmaps have none; CRs would
    assert f"recorded {len(changes)} watch event(s) of configmaps" in run.stderr()

    # The test's own measure: from the change to the operator's reconcile of that object.
    calls = sorted((c for c in pod.operator.calls() if "entry_ns" in c),
                   key=lambda c: c["entry_ns"])
    assert len(calls) == len(changes)
    measured = []
    for call, (name, _, before, _) in zip(calls, changes, strict=True):
        assert call["name"] == name and call["cause"] == "change"
        measured.append((call["entry_ns"] - before) / 1e9)
    api_call = statistics.mean((after - before) / 1e9 for *_, before, after in changes)

    result = run_tracer("report", "--json", str(trace))
    assert result.returncode == 0, result.stderr
    causes = json.loads(result.stdout)["causes"]
    assert causes["counts"].get("change") == len(changes)
    latency = causes["change_latency_s"]
    assert latency["count"] == len(changes)
    # The tracer stamps an event when its own watch hears of it, a little after the test
    # began the change: the two measures differ by about the API call and the delivery.
    assert abs(latency["mean"] - statistics.mean(measured)) <= api_call + 0.02, \
        (latency, measured, api_call)


def test_by_default_the_kind_the_reconciler_is_named_after(kube_cluster, kube, tracer_cmd,
                                                           tmp_path):
    """(*SampleReconciler).Reconcile reconciles Samples: with a Sample CRD served, it is
    watched without being named."""
    ext = client.ApiextensionsV1Api(kube_cluster.api_client)
    crd = "samples.example.com"
    try:
        ext.create_custom_resource_definition({
            "metadata": {"name": crd},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "samples", "singular": "sample", "kind": "Sample"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                         "openAPIV3Schema": {"type": "object",
                                             "x-kubernetes-preserve-unknown-fields": True}}}]}})
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise

    def established():
        got = ext.read_custom_resource_definition(crd)
        return any(c.type == "Established" and c.status == "True"
                   for c in got.status.conditions or [])

    wait_until(established, 30, "the CRD to be served")
    pod = kube.pod("op-default-watch", args=["-calls", "1", "-linger"])
    trace = tmp_path / "default.jsonl"
    run = tracer_cmd("attach", pod.name, "-q", "-o", str(trace),
                     "--kubeconfig", str(kube_cluster.kubeconfig))
    wait_for_header(trace, run)
    # A client of its own: the shared one's pooled connection may have been closed by the
    # server since the CRD went in.
    custom = client.CustomObjectsApi(kube_cluster.client_for(kube_cluster.kubeconfig))
    # The tracer lists before it writes its header's first event: wait for its watch to run.
    time.sleep(1)
    custom.create_namespaced_custom_object("example.com", "v1", "default", "samples", {
        "apiVersion": "example.com/v1", "kind": "Sample", "metadata": {"name": "s-1"}})
    try:
        wait_until(lambda: any(r["type"] == "event" for r in read_lines(trace)), 20,
                   "the Sample's event")
    finally:
        custom.delete_namespaced_custom_object("example.com", "v1", "default", "samples",
                                               "s-1")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    [event] = [r for r in read_lines(trace) if r["type"] == "event" and r["event"] == "ADDED"]
    assert event["kind"] == "Sample" and event["name"] == "s-1"
    assert event["generation"] == 1  # custom resources have one
    assert "watch event(s) of samples.example.com" in run.stderr()
