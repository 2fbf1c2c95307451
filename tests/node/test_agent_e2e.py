"""`tracer attach POD` against operator pods that a real kubelet started (tests/node/cluster.py:
etcd, kube-apiserver, containerd + runc, a bridge network, the kubelet), the way a user on a
laptop runs it: the tracer in a PID namespace of its own (it cannot see the node's processes),
with only a kubeconfig. The agent image is the one scripts/build-agent-image makes, imported
into the node's containerd; it comes back through the API server's attach stream.

Ground truth: the real controller-runtime operator's own record of each reconcile, written to
a hostPath the test reads. The operator's clock and the agent's are this machine's
CLOCK_MONOTONIC, so the window and the spans compare directly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import TRACER, interrupt, read_lines, wait_for_header, wait_until
from kube.objects import read_jsonl
from kubernetes import client
from realops.operators import (
    CR_BUILDS,
    GROUP,
    PLURAL,
    VERSION,
    check_span,
    default_plan,
    drive_workload,
    install_crd,
    match,
)

import tracer
from node import pods
from node.pods import TRUTH_IN_POD, UNSHARE, OperatorPod, check_k8s_fields

ROOT = Path(__file__).resolve().parent.parent.parent
outside = pods.outside  # the fixture
BUILD = CR_BUILDS["cr-operator-stripped"]
MEMCACHED_RECONCILE = "example.com/cr-operator/internal/controller.(*MemcachedReconciler).Reconcile"


class PodOperator(OperatorPod):
    """The cr-operator running as a pod, watching only its namespace."""

    def __init__(self, cluster, name: str, truth_dir: Path, namespace: str = "default") -> None:
        super().__init__(
            cluster, name, BUILD.binary,
            ["--ground-truth", f"{TRUTH_IN_POD}/truth.jsonl", "--leader-elect=false",
             "--max-concurrent-reconciles", "4", "--namespace", namespace],
            truth_dir, namespace)
        self.truth = truth_dir / "truth.jsonl"

    def records(self) -> list[dict]:
        return [r for r in read_jsonl(self.truth) if "entry_ns" in r]


@pytest.fixture(scope="module")
def cluster(node_cluster):
    """The node cluster with the Memcached CRD and the agent image (scripts/build-agent-image,
    cached once per tracer version) in the node's containerd."""
    install_crd(node_cluster.api_client)
    node_cluster.agent_image = node_cluster.import_agent_image()
    assert node_cluster.agent_image == f"localhost/tracer-agent:{tracer.__version__}"
    return node_cluster


def namespace(cluster, name: str, labels: dict | None = None) -> str:
    """A namespace pods can run in: what the controllers this cluster leaves out would add
    (its default ServiceAccount)."""
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    return name


@pytest.fixture
def operator(cluster, tmp_path):
    """start(name, namespace="default") -> PodOperator watching only its namespace; its pod
    is deleted when the test ends."""
    started: list[PodOperator] = []

    def start(name: str, namespace: str = "default") -> PodOperator:
        op = PodOperator(cluster, name, tmp_path / f"truth-{name}", namespace)
        started.append(op)
        return op

    yield start
    for op in started:
        op.delete()


def run_outside(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*UNSHARE, *TRACER, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def traced_window(cluster, op: PodOperator, run, trace: Path, namespace: str
                  ) -> tuple[list[dict], list[dict], dict, int, int]:
    """The workload run while traced: (truth inside the window, spans, header, opened,
    closed)."""
    header = wait_for_header(trace, run, timeout=120)
    opened = time.monotonic_ns()
    drive_workload(cluster.api_client, namespace, operator=op, plan=default_plan(),
                   has_priority=BUILD.has_priority)
    time.sleep(0.5)
    closed = time.monotonic_ns()
    truth = [r for r in op.records() if opened <= r["entry_ns"] and r["exit_ns"] <= closed]
    spans = [r for r in read_lines(trace) if r["type"] == "span" and r["start_ns"] <= closed
             and (r["end_ns"] or 0) >= opened]
    return truth, spans, header, opened, closed


def test_ephemeral_agent_traces_every_reconcile(cluster, operator, outside, tmp_path):
    op = operator("cr-eph")
    restarts = op.restarts()
    trace = tmp_path / "trace.jsonl"
    run = outside("attach", op.name, "--agent", "ephemeral", "--agent-image",
                  cluster.agent_image, "--kubeconfig", str(cluster.kubeconfig),
                  "-o", str(trace), "--quiet")
    truth, spans, header, opened, closed = traced_window(cluster, op, run, trace, "default")
    records = interrupt(run, trace)
    end = records[-1]
    assert end["code_restored"] is True
    assert truth, "no reconcile in the window"
    matched = match(truth, spans, opened, closed)
    assert {s["function"] for s in matched.values()} >= {MEMCACHED_RECONCILE}
    for i, call in enumerate(truth):
        check_span(call, matched[i], BUILD.has_priority)
    assert header["via"]["kind"] == "ephemeral"
    check_k8s_fields(op, cluster, header, spans)
    # The default watch: the reconcilers' kind, known from the agent's header.
    changed = {(r["event"], r["name"]) for r in records
               if r["type"] == "event" and r["kind"] == "Memcached"}
    assert {("ADDED", c["name"]) for c in truth if c["controller"] == "memcached"} <= changed
    # The operator was never restarted, and it runs on after the agent left.
    assert op.restarts() == restarts
    [agent] = op.status().spec.ephemeral_containers
    assert agent.security_context.capabilities.add == ["SYS_PTRACE"]


def test_node_agent_traces_and_is_removed(cluster, operator, outside, tmp_path):
    op = operator("cr-node")
    restarts = op.restarts()
    trace = tmp_path / "trace.jsonl"
    run = outside("attach", op.name, "--agent", "node", "--agent-image", cluster.agent_image,
                  "--kubeconfig", str(cluster.kubeconfig), "-o", str(trace), "--quiet",
                  "--duration", "600")
    truth, spans, header, opened, closed = traced_window(cluster, op, run, trace, "default")
    agents = op.core.list_namespaced_pod(
        "default", label_selector="app.kubernetes.io/name=tracer-agent").items
    assert [a.spec.node_name for a in agents] == [cluster.node]
    assert agents[0].spec.host_pid is True
    run.signal(signal.SIGTERM)
    assert run.wait(60) == 0, run.stderr()
    end = read_lines(trace)[-1]
    assert end["type"] == "end" and end["code_restored"] is True, end
    match(truth, spans, opened, closed)
    assert header["via"]["kind"] == "node"
    check_k8s_fields(op, cluster, header, spans)
    assert op.restarts() == restarts
    wait_until(lambda: not op.core.list_namespaced_pod(
        "default", label_selector="app.kubernetes.io/name=tracer-agent").items, 60,
        "the node agent pod to be removed")


def test_duration_and_deleted_pod_end_the_run(cluster, operator, outside, tmp_path):
    """--duration ends one run; the operator's pod being deleted ends another, with a
    readable trace whose end line says why."""
    op = operator("cr-dur")
    trace = tmp_path / "dur.jsonl"
    run = outside("attach", op.name, "--agent", "ephemeral", "--agent-image",
                  cluster.agent_image, "--kubeconfig", str(cluster.kubeconfig),
                  "-o", str(trace), "--quiet", "--duration", "5")
    wait_for_header(trace, run, timeout=120)
    assert run.wait(90) == 0, run.stderr()
    end = read_lines(trace)[-1]
    assert end["type"] == "end" and end["reason"] == "duration", end
    assert end["code_restored"] is True

    trace = tmp_path / "deleted.jsonl"
    run = outside("attach", op.name, "--agent", "ephemeral", "--agent-image",
                  cluster.agent_image, "--kubeconfig", str(cluster.kubeconfig),
                  "-o", str(trace), "--quiet")
    wait_for_header(trace, run, timeout=120)
    pid = op.host_pid()
    op.core.delete_namespaced_pod(op.name, op.namespace)
    assert run.wait(90) == 0, run.stderr()
    end = read_lines(trace)[-1]  # whole lines: the file is readable
    # The operator is its PID namespace's init: it takes the ephemeral agent with it. The
    # trace says the operator ended only once the API server says so, and it has.
    assert end["type"] == "end" and end["reason"] == "target-exited", end
    assert f"in default/{op.name} ended" in run.stderr() or \
        f"pod default/{op.name} was deleted" in run.stderr(), run.stderr()
    assert not os.path.exists(f"/proc/{pid}"), "the operator still runs"


def test_local_node_mode_finds_the_container(cluster, operator, tracer_cmd, tmp_path):
    """On the node itself, `tracer attach POD` finds the container's process through
    containerd's real cgroup and mount layout, and traces it in-process."""
    op = operator("cr-local")
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", op.name, "--kubeconfig", str(cluster.kubeconfig),
                     "-o", str(trace), "--quiet")
    truth, spans, header, opened, closed = traced_window(cluster, op, run, trace, "default")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    match(truth, spans, opened, closed)
    check_k8s_fields(op, cluster, header, spans)
    assert "via" not in header


def test_refusals_are_one_line(cluster, operator, tmp_path):
    """What a user meets on a real cluster: each is one line and exit 2, nothing left
    half-written."""
    op = operator("cr-refuse")
    kubeconfig = str(cluster.kubeconfig)

    # An image the node does not have: the kubelet's own reason, not a timeout.
    trace = tmp_path / "noimage.jsonl"
    result = run_outside("attach", op.name, "--agent", "ephemeral", "--agent-image",
                         "localhost/tracer-agent:no-such-tag", "--kubeconfig", kubeconfig,
                         "-o", str(trace), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "its image cannot be pulled (ErrImagePull" in line, line
    assert "no-such-tag" in line and "did not start within" not in line
    assert not trace.exists()

    # Not on this machine's PID namespace and no agent asked for: said, with --agent.
    result = run_outside("attach", op.name, "--kubeconfig", kubeconfig, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--agent" in result.stderr.strip().splitlines()[-1]

    # A namespace whose Pod Security level forbids SYS_PTRACE: the API server's words.
    # The level is set once the operator runs: its own pod (hostPath volumes) would not pass.
    namespace(cluster, "baseline")
    baseline = operator("cr-baseline", "baseline")
    client.CoreV1Api(cluster.api_client).patch_namespace("baseline", {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "baseline"}}})
    for kind in ("ephemeral", "node"):
        result = run_outside("attach", baseline.name, "-n", "baseline", "--agent", kind,
                             "--agent-image", cluster.agent_image, "--kubeconfig", kubeconfig,
                             cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        said, _, hint = line.partition(" (the agent needs SYS_PTRACE")
        assert "violates PodSecurity" in said and '"SYS_PTRACE"' in said, line
        assert hint and "RBAC" not in line


def test_rbac_manifest_is_enough_and_its_absence_is_named(cluster, operator, outside, tmp_path):
    """deploy/rbac.yaml's two roles, bound in one namespace as its header says, let a user
    trace through an ephemeral agent; without the agent role each refusal names the verb and
    resource."""
    import yaml

    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    for doc in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()):
        if doc:
            rbac.create_cluster_role(doc)
    namespace(cluster, "team")
    op = operator("cr-rbac", "team")
    alice = cluster.user_kubeconfig("alice", tmp_path / "alice.kubeconfig")

    def bind(role: str) -> None:
        rbac.create_namespaced_role_binding("team", {
            "metadata": {"name": f"{role}-alice"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "alice"}]})

    bind("tracer-user")
    for kind, verb, resource in (("ephemeral", "patch", "pods/ephemeralcontainers"),
                                 ("node", "create", "pods")):
        result = run_outside("attach", op.name, "-n", "team", "--agent", kind,
                             "--agent-image", cluster.agent_image, "--kubeconfig", str(alice),
                             cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert line.endswith(f"(RBAC: grant verb '{verb}' on resource '{resource}')"), line

    bind("tracer-agent")
    trace = tmp_path / "alice.jsonl"
    run = outside("attach", op.name, "-n", "team", "--agent", "ephemeral", "--agent-image",
                  cluster.agent_image, "--kubeconfig", str(alice), "-o", str(trace), "--quiet")
    wait_for_header(trace, run, timeout=120)
    wait_until(lambda: any(r["type"] == "span" for r in read_lines(trace)) or
               _poke(cluster, "team"), 60, "a span")
    run.signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    assert read_lines(trace)[-1]["code_restored"] is True
    # The default watch (the reconcilers' kinds) is more than the manifest grants: said, and
    # the trace goes on.
    assert "warning: no watch events: access denied" in run.stderr()


def _poke(cluster, namespace: str) -> bool:
    """Give the operator something to reconcile (a Memcached), once."""
    co = client.CustomObjectsApi(cluster.api_client)
    try:
        co.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Memcached",
            "metadata": {"name": "poke"}, "spec": {"size": 1}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    return False

