"""`tracer attach POD` against a real kube-apiserver, with pods whose containers are real
sample operators in kubelet-shaped cgroups and their own PID namespaces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers import (
    assert_every_call_once,
    read_lines,
    run_tracer,
    wait_for_header,
    wait_until,
)

CALLS = ["-workers", "4", "-calls", "300", "-objects", "20", "-error-every", "7",
         "-requeue-after-every", "11", "-linger"]


def spans_of(trace) -> list[dict]:
    return [r for r in read_lines(trace) if r["type"] == "span"]


def trace_until_done(tracer_cmd, tmp_path, pods, *args: str) -> tuple[object, list[dict]]:
    """Attach with `args`, start every pod's work, wait for it all, detach with Ctrl-C."""
    trace = tmp_path / "pod.jsonl"
    run = tracer_cmd("attach", *args, "-q", "-o", str(trace))
    header = wait_for_header(trace, run)
    for pod in pods:
        pod.start_work()
    for pod in pods:
        wait_until(lambda p=pod: p.operator.done(), 60, f"{pod.name}'s work")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    return header, read_lines(trace)


def assert_tags(record: dict, pod) -> None:
    assert record["k8s"] == {
        "pod": pod.name, "namespace": pod.namespace, "container": pod.container,
        "node": pod.node, "container_id": pod.status_container_id,
    }


@pytest.mark.parametrize("driver,runtime,cgroup_version", [
    ("systemd", "containerd", 1),
    ("cgroupfs", "cri-o", 2),
    ("systemd", "docker", 2),
])
def test_attach_pod_records_every_call_like_a_pid(kube_cluster, kube, tracer_cmd, tmp_path,
                                                  driver, runtime, cgroup_version):
    pod = kube.pod(f"op-{driver}-{runtime}-v{cgroup_version}", args=CALLS, driver=driver,
                   runtime=runtime, cgroup_version=cgroup_version)
    header, lines = trace_until_done(tracer_cmd, tmp_path, [pod], pod.name,
                                     "--kubeconfig", str(kube_cluster.kubeconfig))
    # The process the tracer found is the container's own, seen from the host.
    assert header["target"]["pid"] == pod.host_pid
    assert header["target"]["pid"] != pod.ns_pid
    assert_tags(header, pod)
    spans = [r for r in lines if r["type"] == "span"]
    assert_every_call_once(pod.operator.calls(), spans)
    for span in spans:
        assert_tags(span, pod)
    assert lines[-1]["type"] == "end" and lines[-1]["code_restored"] is True


def test_pod_named_as_kubectl_does_with_namespace_and_container(kube_cluster, kube,
                                                               tracer_cmd, tmp_path):
    kube.namespace("operators")
    pod = kube.pod("op-multi", namespace="operators", containers=("proxy", "manager"),
                   container="manager", args=CALLS)
    header, lines = trace_until_done(tracer_cmd, tmp_path, [pod], f"pod/{pod.name}",
                                     "-n", "operators", "-c", "manager",
                                     "--kubeconfig", str(kube_cluster.kubeconfig))
    assert_tags(header, pod)
    assert_every_call_once(pod.operator.calls(),
                           [r for r in lines if r["type"] == "span"])


def test_deploy_traces_the_lease_holder(kube_cluster, kube, tracer_cmd, tmp_path):
    dep = kube.deployment("memcached-operator", replicas=2, args=CALLS)
    leader = dep.pods[1]  # not the first: the lease must decide
    kube.lease("memcached-operator-lock", leader.name)
    header, lines = trace_until_done(tracer_cmd, tmp_path, [leader],
                                     f"deploy/{dep.name}",
                                     "--kubeconfig", str(kube_cluster.kubeconfig))
    assert_tags(header, leader)
    assert_every_call_once(leader.operator.calls(),
                           [r for r in lines if r["type"] == "span"])
    stderr = (tmp_path / "tracer.stderr").read_text()
    assert f"tracing pod {leader.name}: holds the leader-election lease" in stderr


def test_deploy_without_lease_traces_the_first_ready_pod(kube_cluster, kube, tmp_path):
    dep = kube.deployment("plain-operator", replicas=2, args=CALLS)
    # The oldest (creation times are in whole seconds: then the first by name).
    first = min(dep.pods, key=lambda p: (p.object.metadata.creation_timestamp, p.name))
    trace = tmp_path / "t.jsonl"
    result = run_tracer("attach", f"deployment/{dep.name}", "-d", "1", "-q", "-o", str(trace),
                        "--kubeconfig", str(kube_cluster.kubeconfig))
    assert result.returncode == 0, result.stderr
    assert_tags(read_lines(trace)[0], first)
    assert "first ready of 2 running pod(s)" in result.stderr


def test_selector_traces_two_pods_into_one_file(kube_cluster, kube, tracer_cmd, tmp_path):
    pods = [kube.pod(f"op-sel-{i}", labels={"app": "sel"}, args=CALLS) for i in range(2)]
    kube.pod("op-other", labels={"app": "other"}, args=CALLS)
    header, lines = trace_until_done(tracer_cmd, tmp_path, pods, "-l", "app=sel",
                                     "--kubeconfig", str(kube_cluster.kubeconfig))
    assert sorted(t["k8s"]["pod"] for t in header["targets"]) == [p.name for p in pods]
    spans = [r for r in lines if r["type"] == "span"]
    for pod in pods:
        mine = [s for s in spans if s["k8s"]["pod"] == pod.name]
        for span in mine:
            assert_tags(span, pod)
        assert_every_call_once(pod.operator.calls(), mine)
    assert len(spans) == sum(len(p.operator.calls()) for p in pods)
    ends = [r for r in lines if r["type"] == "end"]
    assert len(ends) == 1 and ends[0]["code_restored"] is True


def test_in_cluster_configuration(kube_cluster, kube, tmp_path):
    """Run in a pod (host PID namespace): no kubeconfig, the pod's service account. The
    account's files are mounted where every pod has them, in a mount namespace of the
    tracer's own."""
    pod = kube.pod("op-incluster", args=CALLS)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(kube_cluster.admin_token)
    (account / "ca.crt").write_bytes(kube_cluster.ca.read_bytes())
    (account / "namespace").write_text("default")
    port = kube_cluster.server.rsplit(":", 1)[1]
    trace = tmp_path / "incluster.jsonl"
    secrets = "/run/secrets/kubernetes.io/serviceaccount"
    mount = (f"mount -t tmpfs tmpfs /run && mkdir -p {secrets} && "
             f"mount --bind {account} {secrets} && "
             'exec "$@"')
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(HOME=str(tmp_path), KUBERNETES_SERVICE_HOST="127.0.0.1",
               KUBERNETES_SERVICE_PORT=port)
    # unshare and sh exec: the tracer keeps the PID, so the test ends it by that PID.
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh",
         sys.executable, "-m", "tracer", "attach", pod.name, "-q", "-o", str(trace)],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        try:
            header = wait_for_header(trace, None, timeout=60)
        except AssertionError:
            os.kill(proc.pid, signal.SIGINT)
            raise AssertionError(proc.communicate(timeout=30)[1]) from None
        assert_tags(header, pod)
        pod.start_work()
        wait_until(pod.operator.done, 60, "the operator's work")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert_every_call_once(pod.operator.calls(), spans_of(trace))
