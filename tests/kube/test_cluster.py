"""The Kubernetes test infrastructure is real and kubelet-shaped: a real API server that
stores and authorizes, pods whose status points at real processes in their own PID namespace
and in cgroups named as kubelet names them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers import alive, wait_until
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .cluster import DENIED_USER
from .pods import Kube

HEX64 = r"[0-9a-f]{64}"
UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def proc_cgroup(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {controllers: path for _, controllers, path in (ln.split(":", 2) for ln in lines)}


def nspid(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no NSpid")


def test_api_server_serves_the_running_pod(kube_cluster, kube_pod):
    pod = kube_pod("op-a", labels={"app": "op"})
    core = kube_cluster.core
    listed = {p.metadata.name: p for p in core.list_namespaced_pod("default").items}
    assert "op-a" in listed
    got = core.read_namespaced_pod("op-a", "default")
    assert got.metadata.uid == pod.uid
    assert got.metadata.labels == {"app": "op"}
    assert got.spec.node_name == os.uname().nodename
    assert got.status.phase == "Running"
    assert got.status.qos_class == "Burstable"
    assert got.status.pod_ip == pod.pod_ip
    (status,) = got.status.container_statuses
    assert status.name == "manager"
    assert status.container_id == f"containerd://{pod.container_id}"
    assert re.fullmatch(HEX64, pod.container_id)
    assert status.ready and status.started and status.state.running is not None
    ready = [c for c in got.status.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True"
    assert core.list_namespaced_pod("default", label_selector="app=op").items[0].metadata.name \
        == "op-a"


LAYOUTS = [
    # driver, runtime, cgroup version, the leaf kubelet/runtime name for it
    ("systemd", "containerd", 1, r"cri-containerd-(?P<id>{hex})\.scope"),
    ("systemd", "cri-o", 1, r"crio-(?P<id>{hex})\.scope"),
    ("systemd", "docker", 2, r"docker-(?P<id>{hex})\.scope"),
    ("systemd", "containerd", 2, r"cri-containerd-(?P<id>{hex})\.scope"),
    ("cgroupfs", "containerd", 1, r"(?P<id>{hex})"),
    ("cgroupfs", "docker", 2, r"(?P<id>{hex})"),
]


@pytest.mark.parametrize("driver,runtime,version,leaf", LAYOUTS,
                         ids=[f"{d}-{r}-v{v}" for d, r, v, _ in LAYOUTS])
def test_operator_runs_in_a_kubelet_shaped_cgroup(kube_cluster, kube_pod, driver, runtime,
                                                  version, leaf):
    pod = kube_pod("op-cg", driver=driver, runtime=runtime, cgroup_version=version)
    if driver == "systemd":
        uid = pod.uid.replace("-", "_")
        shape = (rf"/kubepods\.slice/kubepods-burstable\.slice/kubepods-burstable-pod{uid}\.slice"
                 rf"/{leaf.format(hex=HEX64)}")
    else:
        shape = rf"/kubepods/burstable/pod{pod.uid}/{leaf.format(hex=HEX64)}"
    lines = proc_cgroup(pod.host_pid)
    hierarchies = [c for c in lines if c] if version == 1 else [""]
    assert hierarchies
    for controllers in hierarchies:
        match = re.search(shape + "$", lines[controllers])
        assert match, f"{controllers}:{lines[controllers]} is not shaped {shape}"
        assert match["id"] == pod.container_id
    scheme = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}[runtime]
    status = kube_cluster.core.read_namespaced_pod("op-cg", "default").status
    assert status.container_statuses[0].container_id == f"{scheme}://{pod.container_id}"
    # Only the container's own process is in its cgroup (no unshare, no shell).
    for controllers, path in pod.proc_cgroup.items():
        hierarchy = next(h for h in pod.main.cgroup.hierarchies if h.controllers == controllers)
        members = (hierarchy.directory(path) / "cgroup.procs").read_text().split()
        assert members == [str(pod.host_pid)]


def test_operator_is_pid_1_of_its_own_pid_namespace_and_traceable_truth(kube_pod):
    pod = kube_pod("op-ns", args=["-calls", "12", "-workers", "2"])
    pids = nspid(pod.host_pid)
    assert pids == [pod.host_pid, 1]
    assert pod.ns_pid == 1
    assert os.readlink(f"/proc/{pod.host_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert os.readlink(f"/proc/{pod.host_pid}/exe").endswith("go1.27/sample-operator")
    # The pod's hostname is its name, as in a real pod (leader-election identities use it).
    seen = subprocess.run(["nsenter", "-t", str(pod.host_pid), "-u", "hostname"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert seen == "op-ns" != socket.gethostname()
    # The host PID is the operator itself: a signal to it starts its work.
    pod.start_work()
    done = wait_until(pod.operator.done, 30, "the operator to finish its calls")
    assert len(pod.operator.calls()) >= 12 and done["done"]


def test_node_is_registered_and_ephemeral_containers_are_served(kube_cluster, kube_pod):
    node = kube_cluster.core.read_node(socket.gethostname())
    assert [c.status for c in node.status.conditions if c.type == "Ready"] == ["True"]
    kube_pod("op-eph")
    kube_cluster.core.patch_namespaced_pod_ephemeralcontainers("op-eph", "default", {
        "ephemeralContainers": [{"name": "debugger", "image": "example.com/tracer:dev",
                                 "targetContainerName": "manager",
                                 "terminationMessagePolicy": "File"}]})
    spec = kube_cluster.core.read_namespaced_pod("op-eph", "default").spec
    assert [(e.name, e.target_container_name) for e in spec.ephemeral_containers] == [
        ("debugger", "manager")]


def test_token_without_rights_is_forbidden(kube_cluster, kube_pod):
    kube_pod("op-denied")
    denied = client.CoreV1Api(kube_cluster.client_for(kube_cluster.denied_kubeconfig))
    with pytest.raises(ApiException) as excinfo:
        denied.list_namespaced_pod("default")
    assert excinfo.value.status == 403
    assert 'cannot list resource "pods"' in json.loads(excinfo.value.body)["message"]
    admin = client.CoreV1Api(kube_cluster.client_for(kube_cluster.kubeconfig))
    assert [p.metadata.name for p in admin.list_namespaced_pod("default").items] == ["op-denied"]
    # The admin's kubeconfig names the same user as a second context.
    other = client.CoreV1Api(config.new_client_from_config(
        config_file=str(kube_cluster.kubeconfig), context=DENIED_USER))
    with pytest.raises(ApiException) as excinfo:
        other.list_namespaced_pod("default")
    assert excinfo.value.status == 403


def test_several_containers_each_with_own_process(kube_cluster, kube_pod):
    pod = kube_pod("op-multi", containers=["proxy", "manager"], container="manager")
    proxy, manager = pod.containers["proxy"], pod.containers["manager"]
    assert pod.container_id == manager.id != proxy.id
    assert proxy.host_pid != pod.host_pid
    assert proc_cgroup(proxy.host_pid)["pids"].endswith(f"cri-containerd-{proxy.id}.scope")
    assert proc_cgroup(pod.host_pid)["pids"].endswith(f"cri-containerd-{manager.id}.scope")
    statuses = kube_cluster.core.read_namespaced_pod("op-multi", "default") \
        .status.container_statuses
    assert {s.name: s.container_id for s in statuses} == {
        "proxy": f"containerd://{proxy.id}", "manager": f"containerd://{manager.id}"}


def test_pending_pod_has_no_container(kube_cluster, kube):
    kube.pending_pod("op-pending")
    got = kube_cluster.core.read_namespaced_pod("op-pending", "default")
    assert got.status.phase == "Pending"
    (status,) = got.status.container_statuses
    assert status.container_id is None and status.state.waiting.reason == "ContainerCreating"


def test_pod_elsewhere_runs_on_another_node_with_no_local_process(kube_cluster, kube):
    pod = kube.pod_elsewhere("op-far", node="node-b")
    got = kube_cluster.core.read_namespaced_pod("op-far", "default")
    assert got.spec.node_name == "node-b" and got.status.phase == "Running"
    assert got.status.container_statuses[0].container_id == f"containerd://{pod.container_id}"
    assert pod.host_pid is None
    local = [p for p in Path("/proc").iterdir() if p.name.isdigit()
             and pod.container_id in _read(p / "cgroup")]
    assert local == []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # a process that ended while we looked
        return ""


def test_deployment_owns_its_pods_through_a_replicaset(kube_cluster, kube):
    kube.namespace("ops")
    dep = kube.deployment("op-dep", namespace="ops", replicas=2)
    apps = client.AppsV1Api(kube_cluster.api_client)
    got = apps.read_namespaced_deployment("op-dep", "ops")
    assert got.spec.selector.match_labels == {"app": "op-dep"}
    assert got.status.ready_replicas == 2
    rs = apps.read_namespaced_replica_set(dep.replicaset, "ops")
    assert rs.metadata.owner_references[0].uid == got.metadata.uid
    pods = kube_cluster.core.list_namespaced_pod("ops", label_selector="app=op-dep").items
    assert sorted(p.metadata.name for p in pods) == sorted(p.name for p in dep.pods)
    for p in pods:
        assert p.metadata.name.startswith(f"{dep.replicaset}-")
        assert p.metadata.owner_references[0].uid == rs.metadata.uid
        assert p.status.phase == "Running"
    assert len({p.host_pid for p in dep.pods}) == 2


def test_lease_names_the_leader_pod(kube_cluster, kube):
    dep = kube.deployment("op-leader", replicas=2)
    leader = dep.pods[1]
    kube.lease("op-leader-lock", leader.name)
    lease = client.CoordinationV1Api(kube_cluster.api_client) \
        .read_namespaced_lease("op-leader-lock", "default")
    name, _, rest = lease.spec.holder_identity.rpartition("_")
    assert name == leader.name
    assert uuid.UUID(rest)
    assert re.fullmatch(UID, rest)
    assert lease.spec.lease_duration_seconds == 15


def test_cleanup_ends_processes_and_removes_cgroups_and_pods(kube_cluster, tmp_path):
    kube = Kube(kube_cluster, tmp_path)
    try:
        pods = [kube.pod("op-clean-1", driver="cgroupfs"),
                kube.pod("op-clean-2", cgroup_version=2, containers=["a", "b"])]
    finally:
        kube.cleanup()
    for pod in pods:
        for container in pod.containers.values():
            assert not alive(container.host_pid)
            assert container.process.proc.returncode is not None
            for hierarchy in container.cgroup.hierarchies:
                # The container's directory and its pod's are gone.
                leaf = hierarchy.directory(container.cgroup.full_path(hierarchy))
                assert not leaf.exists() and not leaf.parent.exists()
        with pytest.raises(ApiException) as excinfo:
            kube_cluster.core.read_namespaced_pod(pod.name, "default")
        assert excinfo.value.status == 404
    # The operator was ended with SIGTERM: it flushed its ground truth and exited 0.
    assert pods[0].operator.proc.returncode == 0
