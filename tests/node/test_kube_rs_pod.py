"""`tracer attach POD --agent ephemeral` against the real kube-rs operator (kube 5.0.0's
Controller on tokio, samples/kube-rs-operator) in a pod the real kubelet started, the way a
user on a laptop runs it: the tracer in a PID namespace of its own, with only a kubeconfig.

The release build as shipped: no DWARF, v0 names, dynamically linked against glibc; its image
holds what a distroless/cc image gives it (scripts/cluster run-operator: its ELF interpreter
and shared libraries), and it runs as uid 65532. No probe is named. Ground truth: the
operator's own record of each reconcile future (tests/realrust/operators.py), written to a
hostPath the test reads; its thread ids are the pod's PID namespace's, as the agent's are, and
its clock is this machine's CLOCK_MONOTONIC, as the spans' are."""

from __future__ import annotations

import time

import pytest
from helpers import interrupt, wait_for_header
from realrust.operators import BUILDS, RECONCILE, default_widgets, drive, expected, install_crd
from realrust.operators import read_jsonl as read_truth
from realrust.test_trace_kube_rs import match

from node import pods
from node.pods import TRUTH_IN_POD, OperatorPod, check_k8s_fields

outside = pods.outside  # the fixture
BUILD = BUILDS["release"]


@pytest.fixture(scope="module")
def cluster(node_cluster):
    """The node cluster with the Widget CRD (the operator prints it) and the agent image."""
    install_crd(node_cluster.api_client, BUILD.binary)
    node_cluster.agent_image = node_cluster.import_agent_image()
    return node_cluster


def test_ephemeral_agent_traces_kube_rs_pod(cluster, outside, tmp_path):
    namespace = "default"
    op = OperatorPod(cluster, "krs-eph", BUILD.binary,
                     ["--ground-truth", f"{TRUTH_IN_POD}/truth.jsonl", "--namespace", namespace,
                      "--concurrency", "4", "--threads", "2"], tmp_path / "truth", namespace)
    try:
        restarts = op.restarts()
        trace = tmp_path / "trace.jsonl"
        # --max-stopped off: every reconcile is wanted, on 2 shared cores (as tests/realrust).
        run = outside("attach", op.name, "--agent", "ephemeral", "--agent-image",
                      cluster.agent_image, "--kubeconfig", str(cluster.kubeconfig),
                      "-o", str(trace), "--quiet", "--max-stopped", "off")
        header = wait_for_header(trace, run, timeout=120)
        opened = time.monotonic_ns()
        widgets = default_widgets()
        drive(cluster.api_client, namespace, widgets)
        closed = time.monotonic_ns()
        records = interrupt(run, trace)
        end = records[-1]
        assert end["code_restored"] is True
        assert end["pairing"]["orphan_exits"] == 0

        # The probe the tracer chose on its own, and what the header says it reads.
        assert header["probe"] == "kube-rs", header
        assert header["functions"] == [RECONCILE], "error_policy or another closure is traced"
        assert header["binary"]["dwarf"] is False and header["binary"]["path"] == "/operator"
        assert any("status completed, cancelled" in n and "state at +0xb2" in n
                   for n in header["notes"]), header["notes"]
        assert header["via"]["kind"] == "ephemeral"

        truth = [r for r in read_truth(op.truth_dir / "truth.jsonl") if "seq" in r
                 and opened <= r["start_ns"] and r["end_ns"] <= closed]
        spans = [r for r in records if r["type"] == "span"]
        assert len(truth) >= 2 * len(widgets), "the workload made too few reconciles"
        assert {r["status"] for r in truth} >= {"ok", "error"}
        matched = match(truth, spans)  # each once, no span holding two
        inside = [s for s in spans if opened <= s["start_ns"] and s["end_ns"] is not None
                  and s["end_ns"] <= closed]
        assert {s["id"] for s in inside} <= {s["id"] for s in matched.values()}, \
            "a span that is no reconcile"
        by_name = {w.name: w for w in widgets}
        moved = 0
        for call in truth:
            span = matched[call["seq"]]
            assert span["polls"] == call["polls"], (call, span)
            assert span["threads"] == call["threads"], (call, span)
            moved += len(set(call["threads"])) > 1
            want = expected(by_name[call["name"]], call["namespace"])
            assert call["status"] == want["status"], call
            # No DWARF: Ok/Err is not read, the wrapper's state says it completed.
            assert span["status"] == "completed", span
            assert span["result"] is None and span["error"] is None and span["request"] is None
        assert moved, "no reconcile moved between threads: the threads prove nothing"

        check_k8s_fields(op, cluster, header, spans)
        pod = op.status()
        # The image run-operator made (the binary, its interpreter and libraries), non-root.
        assert pod.spec.containers[0].image.startswith(
            "localhost/tracer-operator/kube-rs-operator-release:")
        assert pod.spec.security_context.run_as_user == pods.OPERATOR_USER
        assert op.restarts() == restarts  # never restarted; it runs on after the agent left
        [agent] = pod.spec.ephemeral_containers
        assert agent.security_context.capabilities.add == ["SYS_PTRACE"]
        print(f"kube-rs pod: {len(truth)} reconciles matched, {len(spans)} spans, "
              f"{sum(c['polls'] for c in truth)} polls, {moved} moved between threads")
    finally:
        op.delete()
