"""Every way `tracer attach POD` can be refused: one clear line, exit code 2, no file."""

from __future__ import annotations

import os
import secrets

from helpers import run_tracer


def refused(tmp_path, *args: str, env: dict | None = None) -> str:
    trace = tmp_path / "never.jsonl"
    result = run_tracer("attach", *args, "-q", "-o", str(trace), env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracer: error: "), result.stderr
    assert not trace.exists()
    return lines[0]


def test_no_kubeconfig(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env.update(HOME=str(tmp_path), KUBECONFIG="")
    message = refused(tmp_path, "my-operator", env=env)
    assert "'my-operator' is not a PID, and there is no kubeconfig" in message
    assert "--kubeconfig" in message


def test_missing_kubeconfig_file(tmp_path):
    message = refused(tmp_path, "my-operator", "--kubeconfig", str(tmp_path / "nope"))
    assert "no such file" in message


def test_pod_not_found(kube_cluster, tmp_path):
    message = refused(tmp_path, "no-such-pod", "--kubeconfig", str(kube_cluster.kubeconfig))
    assert "pod no-such-pod not found in namespace default" in message


def test_pod_not_running(kube_cluster, kube, tmp_path):
    pod = kube.pending_pod("op-pending")
    message = refused(tmp_path, pod.name, "--kubeconfig", str(kube_cluster.kubeconfig))
    assert f"pod {pod.name} is Pending, not Running" in message


def test_several_containers_and_no_c_lists_them(kube_cluster, kube, tmp_path):
    pod = kube.pod("op-two", containers=("manager", "kube-rbac-proxy"))
    message = refused(tmp_path, pod.name, "--kubeconfig", str(kube_cluster.kubeconfig))
    assert "has 2 containers (manager, kube-rbac-proxy): choose one with -c NAME" in message


def test_container_not_found(kube_cluster, kube, tmp_path):
    pod = kube.pod("op-one")
    message = refused(tmp_path, pod.name, "-c", "sidecar",
                      "--kubeconfig", str(kube_cluster.kubeconfig))
    assert f"container 'sidecar' not found in pod {pod.name} (containers: manager)" in message


def test_access_denied_names_verb_and_resource(kube_cluster, kube, tmp_path):
    pod = kube.pod("op-denied")
    message = refused(tmp_path, pod.name, "--kubeconfig", str(kube_cluster.denied_kubeconfig))
    assert "access denied" in message
    assert "'get'" in message and "'pods'" in message and "namespace default" in message


def test_process_not_on_this_node_suggests_the_agent(kube_cluster, kube, tmp_path):
    # A pod the API says is running elsewhere: its container is no process of this machine.
    name = "op-elsewhere"
    kube.core.create_namespaced_pod("default", {
        "metadata": {"name": name},
        "spec": {"nodeName": "node-b", "containers": [{"name": "manager",
                                                         "image": "example.com/op:v1"}]}})
    kube._objects.append(("pod", "default", name))
    kube.core.patch_namespaced_pod_status(name, "default", {"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "manager", "image": "example.com/op:v1", "imageID": "", "ready": True,
            "restartCount": 0, "containerID": f"containerd://{secrets.token_hex(32)}",
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})
    message = refused(tmp_path, name, "--kubeconfig", str(kube_cluster.kubeconfig))
    assert "not on this machine" in message and "node-b" in message
    assert "--agent ephemeral" in message


def test_kind_that_is_not_a_pod_or_deployment(kube_cluster, tmp_path):
    message = refused(tmp_path, "sts/db", "--kubeconfig", str(kube_cluster.kubeconfig))
    assert "cannot trace a 'sts'" in message


def test_selector_matching_nothing(kube_cluster, tmp_path):
    message = refused(tmp_path, "-l", "app=nothing-here",
                      "--kubeconfig", str(kube_cluster.kubeconfig))
    assert "no running pod matches -l app=nothing-here" in message
