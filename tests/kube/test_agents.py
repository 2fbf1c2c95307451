"""Tracing from anywhere: the agent containers the API server is asked for, and the node
agent's way of finding the container, run for real between local processes.

There is no kubelet here, so no agent container ever starts: the tests check what the API
server accepted and that the tracer says so and cleans up; the agent's own work (finding the
container's process by its id, streaming) runs as local processes."""

from __future__ import annotations

import os
import signal
import threading
import time

from helpers import (
    TRACER,
    assert_every_call_once,
    read_lines,
    run_tracer,
    wait_for_header,
    wait_until,
)
from kubernetes import client

from .cluster import DENIED_USER, start_cluster
from .pods import Kube

IMAGE = "registry.example.com/tracer-agent:test"
CALLS = ["-workers", "4", "-calls", "300", "-objects", "20", "-error-every", "7", "-linger"]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_ephemeral_agent_is_accepted_by_the_api_server(kube_cluster, kube, tmp_path):
    pod = kube.pod("op-eph", containers=("manager", "proxy"), container="manager")
    trace = tmp_path / "t.jsonl"
    result = run_tracer("attach", pod.name, "-c", "manager", "--agent", "ephemeral",
                        "--agent-image", IMAGE, "--agent-timeout", "2", "--symbol", "Reconcile$",
                        "-o", str(trace), "--kubeconfig", str(kube_cluster.kubeconfig))
    assert result.returncode == 2, result.stderr
    assert "did not start within 2 s" in last_line(result.stderr)
    assert "--agent-image" in last_line(result.stderr)
    assert not trace.exists()
    # What the API server now holds: the agent, targeting the operator's container.
    got = kube.core.read_namespaced_pod(pod.name, pod.namespace)
    [agent] = got.spec.ephemeral_containers
    assert agent.name.startswith("tracer-agent-") and agent.image == IMAGE
    assert agent.command == ["tracer", "agent"]
    assert agent.args[agent.args.index("--symbol") + 1] == "Reconcile$"
    assert agent.target_container_name == "manager"
    assert agent.stdin and agent.stdin_once and not agent.tty
    # 1.20 refuses any securityContext on an ephemeral container: the tracer asks for none
    # there, and says what that means.
    assert agent.security_context is None
    assert "takes no securityContext on ephemeral containers" in result.stderr


def test_ephemeral_agent_needs_the_right_to_patch(kube_cluster, kube, tmp_path):
    pod = kube.pod("op-eph-denied")
    rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client)
    rbac.create_namespaced_role("default", {
        "metadata": {"name": "read-pods"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding("default", {
        "metadata": {"name": "read-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "read-pods"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": DENIED_USER}]})
    try:
        result = run_tracer("attach", pod.name, "--agent", "ephemeral", "--agent-timeout", "2",
                            "-o", str(tmp_path / "t.jsonl"),
                            "--kubeconfig", str(kube_cluster.denied_kubeconfig))
    finally:
        rbac.delete_namespaced_role_binding("read-pods", "default")
        rbac.delete_namespaced_role("read-pods", "default")
    assert result.returncode == 2, result.stderr
    line = last_line(result.stderr)
    assert "access denied" in line and "'patch'" in line
    assert "'pods/ephemeralcontainers'" in line


def test_ephemeral_agent_on_a_cluster_without_the_feature(tmp_path):
    """Before 1.23 the API server serves pods/ephemeralcontainers only with the
    EphemeralContainers gate on: without it the tracer says so in one line and names the
    other ways (a second API server here, started with the gate off)."""
    cluster = start_cluster(tmp_path / "kube", ephemeral_containers=False)
    kube = Kube(cluster, tmp_path)
    try:
        pod = kube.pod("op-eph-off")
        trace = tmp_path / "t.jsonl"
        result = run_tracer("attach", pod.name, "--agent", "ephemeral", "--agent-image", IMAGE,
                            "--agent-timeout", "2", "-o", str(trace),
                            "--kubeconfig", str(cluster.kubeconfig))
        got = kube.core.read_namespaced_pod(pod.name, pod.namespace)
    finally:
        kube.cleanup()
        cluster.stop()
    assert result.returncode == 2, result.stderr
    line = last_line(result.stderr)
    assert "does not serve pods/ephemeralcontainers" in line, line
    assert "--agent node" in line and "Traceback" not in result.stderr
    assert not trace.exists()
    assert not got.spec.ephemeral_containers


def test_node_agent_pod_is_made_for_the_node_and_removed(kube_cluster, kube, tmp_path):
    pod = kube.pod("op-node")
    seen: list = []
    stop = threading.Event()

    def watch_agents():
        while not stop.is_set():
            pods = kube.core.list_namespaced_pod(
                "default", label_selector="app.kubernetes.io/name=tracer-agent").items
            seen.extend(p for p in pods if p not in seen)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_agents, daemon=True)
    watcher.start()
    result = run_tracer("attach", pod.name, "--agent", "node", "--agent-image", IMAGE,
                        "--agent-timeout", "2", "-o", str(tmp_path / "t.jsonl"),
                        "--kubeconfig", str(kube_cluster.kubeconfig))
    stop.set()
    watcher.join()
    assert result.returncode == 2, result.stderr
    assert "did not start within 2 s" in last_line(result.stderr)
    assert seen, "the agent pod was never created"
    agent = seen[0]
    assert agent.spec.node_name == pod.node and agent.spec.host_pid is True
    assert agent.spec.restart_policy == "Never"
    [container] = agent.spec.containers
    assert container.image == IMAGE
    assert container.args[:2] == ["--container-id", pod.status_container_id]
    assert container.security_context.capabilities.add == ["SYS_PTRACE"]
    assert agent.metadata.labels["tracer.dev/target-pod"] == pod.name
    # Removed afterwards: none is left.
    left = kube.core.list_namespaced_pod(
        "default", label_selector="app.kubernetes.io/name=tracer-agent").items
    assert left == []


def test_node_agent_finds_the_container_by_its_id(kube_cluster, kube, tracer_cmd, tmp_path):
    """What the node pod runs, run here: `tracer agent --container-id` in the host's PID
    namespace, received as the API server's attach stream would carry it."""
    pod = kube.pod("op-node-local", args=CALLS, driver="cgroupfs", runtime="cri-o")
    trace = tmp_path / "node.jsonl"
    run = tracer_cmd("receive", "-q", "-o", str(trace), "--tag", f"pod={pod.name}", "--",
                     *TRACER, "agent", "--container-id", pod.status_container_id)
    header = wait_for_header(trace, run)
    assert header["target"]["pid"] == pod.host_pid
    pod.start_work()
    wait_until(pod.operator.done, 60, "the operator's work")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    assert "PID 1 in its container" in run.stderr()
    lines = read_lines(trace)
    assert_every_call_once(pod.operator.calls(), [r for r in lines if r["type"] == "span"])
    assert lines[-1]["type"] == "end" and lines[-1]["code_restored"] is True


def test_agent_for_a_container_not_on_this_node(tmp_path):
    result = run_tracer("receive", "-o", str(tmp_path / "t.jsonl"), "--", *TRACER, "agent",
                        "--container-id", "containerd://" + "ab" * 32)
    assert result.returncode == 2, result.stderr
    assert "has no process on this machine" in last_line(result.stderr)
