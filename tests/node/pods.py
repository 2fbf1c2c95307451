"""What the tests of `tracer attach POD` on the real node share (test_agent_e2e.py for the
Go controller-runtime operator, test_kube_rs_pod.py for the kube-rs one):

  OperatorPod(cluster, name, binary, args, truth_dir, namespace="default")
                  the binary run as Pod NAME by `scripts/cluster run-operator` as uid 65532
                  (distroless's nonroot), TRUTH_DIR (made, chowned to it) mounted at /truth;
                  waited until its log says "ready". .truth .log() .status() .restarts()
                  .delete() .host_pid()
  OutsideTracer(args, cwd, env=None)
                  `tracer ARGS` in a PID namespace of its own (a laptop's view: none of the
                  node's processes); .pid .signal(sig) .wait(timeout) .stderr() .end()
  outside         fixture: start(*args, env=None) -> OutsideTracer, each ended at teardown
  check_k8s_fields(op, cluster, header, spans)
                  the header's and every span's `k8s` name the real pod, container id, node

A test module uses the fixture by naming it: `outside = pods.outside`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import TRACER, wait_until
from kubernetes import client

# A PID namespace of its own, and the tracer in it killed if unshare is (a test's timeout
# kills unshare, whose child would otherwise live on as that namespace's init).
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
OPERATOR_USER = 65532  # distroless's nonroot, as real operators run
TRUTH_IN_POD = "/truth"


class OperatorPod:
    """An operator binary running as a pod; its ground truth is read through a hostPath."""

    def __init__(self, cluster, name: str, binary: Path, args: list[str], truth_dir: Path,
                 namespace: str = "default", ready: str = "ready") -> None:
        truth_dir.mkdir(parents=True, exist_ok=True)
        os.chown(truth_dir, OPERATOR_USER, OPERATOR_USER)
        self.truth_dir = truth_dir
        self.name = name
        self.namespace = namespace
        self.cluster = cluster
        self.core = client.CoreV1Api(cluster.api_client)
        self.pod = cluster.run_operator(name, binary, args,
                                        mounts={str(truth_dir): TRUTH_IN_POD},
                                        user=OPERATOR_USER, namespace=namespace)
        wait_until(lambda: ready in self.log(), 60, f"{name} to log {ready!r}")

    def log(self) -> str:
        return self.core.read_namespaced_pod_log(self.name, self.namespace) or ""

    def status(self) -> client.V1Pod:
        return self.core.read_namespaced_pod(self.name, self.namespace)

    def delete(self) -> None:
        try:
            self.core.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=5)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def restarts(self) -> int:
        return sum(s.restart_count for s in self.status().status.container_statuses or [])

    def host_pid(self) -> int:
        """The operator's process on this node, as containerd knows its task."""
        return container_pid(self.cluster, self.status().status.container_statuses[0]
                             .container_id)


def container_pid(cluster, container_id: str) -> int:
    """A container's process on the host, as containerd knows it."""
    sock = cluster.dir / "containerd" / "containerd.sock"
    out = subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", "tasks", "ls"],
                         capture_output=True, text=True, check=True).stdout
    cid = container_id.removeprefix("containerd://")
    for line in out.splitlines()[1:]:
        task, pid, _status = line.split()
        if task == cid:
            return int(pid)
    raise AssertionError(f"no task {cid} in containerd: {out}")


class OutsideTracer:
    """`tracer` in a PID namespace of its own: like a laptop, it sees none of the node's
    processes and reaches the operator only through the API server. Ended by its PID."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None) -> None:
        self.stderr_path = cwd / "tracer.stderr"
        self.proc = self.unshare = subprocess.Popen(
            [*UNSHARE, *TRACER, *args], cwd=cwd,
            stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "w"),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        # unshare --fork ignores SIGINT itself: the signals go to the tracer, its child.
        self.pid = wait_until(self._child, 10, "the tracer under unshare")

    def _child(self) -> int | None:
        try:
            with open(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children") as f:
                children = f.read().split()
        except FileNotFoundError:
            return None
        return int(children[0]) if children else None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        return self.unshare.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def end(self) -> None:
        if self.unshare.poll() is None:
            try:
                self.signal(signal.SIGINT)
                self.unshare.wait(40)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.kill(self.unshare.pid, signal.SIGKILL)
                self.unshare.wait()


@pytest.fixture
def outside(tmp_path):
    started: list[OutsideTracer] = []

    def start(*args: str, env: dict | None = None) -> OutsideTracer:
        run = OutsideTracer(list(args), tmp_path, env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.end()


def check_k8s_fields(op: OperatorPod, cluster, header: dict, spans: list[dict]) -> None:
    """The trace names the real pod, its container id (as the kubelet reported it) and
    node."""
    pod = op.status()
    [status] = pod.status.container_statuses
    want = {"pod": op.name, "namespace": op.namespace, "container": status.name,
            "node": cluster.node, "container_id": status.container_id}
    assert pod.spec.node_name == cluster.node
    got = header["k8s"]
    assert {k: got.get(k) for k in want} == want
    for span in spans:
        assert span["k8s"] == header["k8s"]
