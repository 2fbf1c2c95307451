"""Pods made real without a kubelet: the Pod object goes through the API server, its
containers are real processes in their own PID (and UTS) namespace inside cgroups shaped like
kubelet's, and the status the test writes points at them, as a kubelet would.

Objects and processes are made through `Kube` (the `kube` fixture), which deletes and ends
everything it made, processes by PID, at teardown.
"""

from __future__ import annotations

import datetime
import itertools
import os
import secrets
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from helpers import Operator, sample, wait_until
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .cgroups import (
    RUNTIME_SCOPE_PREFIX,
    Cgroup2Mount,
    ContainerCgroup,
    kubelet_cgroup,
    remove_cgroups,
    v1_hierarchies,
)
from .cluster import KubeCluster

# containerStatuses[].containerID scheme of each runtime.
RUNTIME_SCHEME = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}
DEFAULT_OPERATOR = "go1.27/sample-operator"

# Runs as PID 1 of the new PID namespace: joins the container's cgroups ("0" is the writer
# itself) and takes the pod's name as hostname before exec'ing the container's command, so no
# other process ever sits in the container's cgroup.
ENTER = ('echo "$1" > /proc/sys/kernel/hostname || exit 1; shift; '
         'while [ "$1" != -- ]; do echo 0 > "$1" || exit 1; shift; done; shift; exec "$@"')

_pod_ips = itertools.count(2)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int) -> str:
    # Like the names controllers generate: lowercase consonants and digits.
    return "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(length))


class ContainerProcess:
    """A command started as PID 1 of its own PID namespace, inside a container cgroup.
    `proc` is unshare(1), which waits for it; `host_pid` is the command itself."""

    def __init__(self, command: list[str], cgroup: ContainerCgroup, hostname: str,
                 stdout, stderr) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--kill-child", "--",
             "sh", "-c", ENTER, "container-enter", hostname,
             *map(str, cgroup.procs_files()), "--", *command],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True,
        )
        self.host_pid: int | None = None

    def find_pid(self) -> int:
        """unshare's only child. Call once the command has shown it runs (after exec)."""
        children = psutil.Process(self.proc.pid).children()
        assert len(children) == 1, f"unshare {self.proc.pid} has children {children}"
        self.host_pid = children[0].pid
        return self.host_pid

    @property
    def ns_pid(self) -> int:
        """The command's PID inside its namespace (NSpid's last field)."""
        return nspids(self.host_pid)[-1]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """unshare ignores SIGTERM while it waits, so the signal goes to the command's PID;
        SIGKILL to unshare's PID takes the command along (--kill-child)."""
        if self.proc.poll() is None and self.host_pid is not None:
            try:
                os.kill(self.host_pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def nspids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no NSpid line for {pid}")


class PodOperator(Operator):
    """A sample operator (helpers.Operator: start_work, records, calls, done, stderr) whose
    process runs in a pod's container: `pid` is its host PID."""

    def __init__(self, binary: Path, truth: Path, args: list[str], cgroup: ContainerCgroup,
                 hostname: str) -> None:
        # Operator.__init__ would start the binary directly; this starts it in the container.
        self.binary = binary
        self.truth = truth
        self.stderr_path = truth.with_suffix(".stderr")
        self.container = ContainerProcess(
            [str(binary), "-wait-signal", "-ground-truth", str(truth), *args], cgroup, hostname,
            subprocess.PIPE, open(self.stderr_path, "w"))
        self.proc = self.container.proc
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.container.stop(signal.SIGKILL, timeout=0)  # no PID to signal: unshare's
            raise AssertionError(
                f"operator did not start: {line!r} {self.stderr_path.read_text()}")
        self.container.find_pid()

    @property
    def pid(self) -> int:
        return self.container.host_pid

    def stop(self) -> None:
        self.container.stop()


@dataclass
class Container:
    name: str
    image: str
    id: str  # 64 hex digits, as the runtime names it
    runtime: str  # containerd | cri-o | docker
    cgroup: ContainerCgroup | None  # None while the pod is Pending
    process: ContainerProcess | None = None

    @property
    def status_id(self) -> str:
        """containerStatuses[].containerID: containerd://<id>, cri-o://<id>, docker://<id>."""
        return f"{RUNTIME_SCHEME[self.runtime]}://{self.id}"

    @property
    def host_pid(self) -> int | None:
        return self.process.host_pid if self.process else None

    @property
    def proc_cgroup(self) -> dict[str, str]:
        if self.cgroup is None:
            return {}
        return {h.controllers: self.cgroup.full_path(h) for h in self.cgroup.hierarchies}


@dataclass
class KubePod:
    """A pod as the API server has it, and the real processes behind its containers.
    The main container (`container`) runs the sample operator; the others run `sleep`."""

    name: str
    namespace: str
    uid: str
    node: str
    labels: dict[str, str]
    phase: str  # Running | Pending
    containers: dict[str, Container]
    container: str  # the operator's container
    driver: str  # systemd | cgroupfs
    cgroup_version: int  # 1 | 2
    qos: str
    pod_ip: str | None
    operator: PodOperator | None = None
    truth: Path | None = None
    object: client.V1Pod | None = field(default=None, repr=False)

    @property
    def main(self) -> Container:
        return self.containers[self.container]

    @property
    def container_id(self) -> str:
        return self.main.id

    @property
    def status_container_id(self) -> str:
        return self.main.status_id

    @property
    def host_pid(self) -> int | None:
        return self.operator.pid if self.operator else None

    @property
    def ns_pid(self) -> int | None:
        return self.main.process.ns_pid if self.operator else None

    @property
    def cgroup(self) -> str | None:
        """The operator container's cgroup as kubelet names it (driver, QoS, uid, id)."""
        return self.main.cgroup.path if self.main.cgroup else None

    @property
    def proc_cgroup(self) -> dict[str, str]:
        """What /proc/HOST_PID/cgroup shows for the operator in each hierarchy it was put in:
        controllers ("" for v2's `0::` line) -> path. The path ends in `cgroup`; it starts
        with the test process's own cgroup where that is not the root."""
        return self.main.proc_cgroup

    def start_work(self) -> None:
        self.operator.start_work()


@dataclass
class KubeDeployment:
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]  # the selector; every pod carries these
    replicaset: str
    pods: list[KubePod]


def _resources(qos: str) -> dict:
    # The API server derives status.qosClass from these, so it matches the cgroup path.
    if qos == "guaranteed":
        amount = {"cpu": "100m", "memory": "64Mi"}
        return {"requests": amount, "limits": amount}
    if qos == "burstable":
        return {"requests": {"cpu": "10m", "memory": "32Mi"}}
    return {}


class Kube:
    """Makes Pods, Deployments and Leases in the test cluster; cleanup() undoes all of it."""

    def __init__(self, cluster: KubeCluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.core = client.CoreV1Api(cluster.api_client)
        self.apps = client.AppsV1Api(cluster.api_client)
        self.coordination = client.CoordinationV1Api(cluster.api_client)
        self.pods: list[KubePod] = []
        self._objects: list[tuple[str, str, str]] = []  # (kind, namespace, name), made order
        self._cgroup2: Cgroup2Mount | None = None
        self._truths = itertools.count()

    # --- objects -------------------------------------------------------------------------

    def namespace(self, name: str) -> None:
        """Namespaces stay (no namespace controller runs to finish deleting one)."""
        try:
            self.core.create_namespace({"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    def pod(self, name: str, *, namespace: str = "default", labels: dict | None = None,
            containers: list[str] | tuple[str, ...] = ("manager",),
            images: dict[str, str] | None = None, container: str | None = None,
            operator: str = DEFAULT_OPERATOR, args: list[str] | tuple[str, ...] = (),
            runtime: str = "containerd", driver: str = "systemd", cgroup_version: int = 1,
            qos: str = "burstable", owner: dict | None = None) -> KubePod:
        """A Running pod. `container` (default: the first) runs the sample `operator` (a path
        under build/samples) parked with -wait-signal and a ground-truth file, like the
        `operator` fixture; every other container runs `sleep infinity`."""
        container = container or containers[0]
        if container not in containers:
            raise ValueError(f"{container!r} is not one of {containers}")
        binary = sample(operator)
        pod = self._create_pod(name, namespace, labels, containers, images, runtime, driver,
                               cgroup_version, qos, owner, container)
        for c in pod.containers.values():
            c.cgroup = ContainerCgroup(
                kubelet_cgroup(driver, qos, pod.uid, c.id, runtime),
                self._hierarchies(cgroup_version))
            c.cgroup.create()
            if c.name == container:
                pod.truth = self.tmp_path / f"truth-{name}-{next(self._truths)}.jsonl"
                pod.operator = PodOperator(binary, pod.truth, list(args), c.cgroup, name)
                c.process = pod.operator.container
            else:
                log = self.tmp_path / f"{name}-{c.name}.log"
                c.process = ContainerProcess(["sleep", "infinity"], c.cgroup, name,
                                             subprocess.DEVNULL, open(log, "w"))
                _wait_exec(c.process)
        pod.phase = "Running"
        n = next(_pod_ips)
        pod.pod_ip = f"10.244.{n // 250}.{n % 250 + 2}"
        pod.object = self.core.patch_namespaced_pod_status(name, namespace,
                                                           _running_status(pod))
        return pod

    def pending_pod(self, name: str, *, namespace: str = "default", labels: dict | None = None,
                    containers: list[str] | tuple[str, ...] = ("manager",),
                    images: dict[str, str] | None = None, qos: str = "burstable",
                    owner: dict | None = None) -> KubePod:
        """A pod scheduled to this node whose containers are still being created: no
        process, no container id in its status."""
        pod = self._create_pod(name, namespace, labels, containers, images, "containerd",
                               "systemd", 1, qos, owner, containers[0])
        pod.object = self.core.patch_namespaced_pod_status(name, namespace,
                                                           _pending_status(pod))
        return pod

    def pod_elsewhere(self, name: str, *, node: str = "node-b", namespace: str = "default",
                      labels: dict | None = None,
                      containers: list[str] | tuple[str, ...] = ("manager",),
                      runtime: str = "containerd") -> KubePod:
        """A pod Running on another node: its status has container ids, but no process of
        this machine is in their cgroups."""
        pod = self._create_pod(name, namespace, labels, containers, None, runtime, "systemd", 1,
                               "burstable", None, containers[0], node=node)
        pod.phase = "Running"
        n = next(_pod_ips)
        pod.pod_ip = f"10.244.{n // 250 + 100}.{n % 250 + 2}"
        pod.object = self.core.patch_namespaced_pod_status(name, namespace,
                                                           _running_status(pod, host_ip="10.0.0.2"))
        return pod

    def track(self, kind: str, namespace: str, name: str) -> None:
        """Delete at teardown an object the test made itself; kind: pod, deployment,
        replicaset or lease."""
        self._objects.append((kind, namespace, name))

    def deployment(self, name: str, *, namespace: str = "default", replicas: int = 1,
                   labels: dict | None = None, containers: list[str] | tuple[str, ...] =
                   ("manager",), **pod_options) -> KubeDeployment:
        """A Deployment, its ReplicaSet and `replicas` Running pods owned by it, named and
        labelled as the deployment controller does (pod-template-hash). `pod_options` go to
        pod()."""
        labels = labels or {"app": name}
        template = {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": c, "image": f"example.com/{c}:v1"}
                                            for c in containers]}}
        dep = self.apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": template}})
        self._objects.append(("deployment", namespace, name))
        template_hash = random_suffix(10)
        rs_labels = {**labels, "pod-template-hash": template_hash}
        rs_name = f"{name}-{template_hash}"
        rs = self.apps.create_namespaced_replica_set(namespace, {
            "metadata": {"name": rs_name, "labels": rs_labels,
                         "ownerReferences": [_owner_ref("apps/v1", "Deployment", dep)]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": rs_labels},
                     "template": {**template, "metadata": {"labels": rs_labels}}}})
        self._objects.append(("replicaset", namespace, rs_name))
        pods = [self.pod(f"{rs_name}-{random_suffix(5)}", namespace=namespace, labels=rs_labels,
                         containers=containers, owner=_owner_ref("apps/v1", "ReplicaSet", rs),
                         **pod_options)
                for _ in range(replicas)]
        counts = {"replicas": replicas, "readyReplicas": replicas,
                  "availableReplicas": replicas, "observedGeneration": 1}
        self.apps.patch_namespaced_replica_set_status(rs_name, namespace, {"status": counts})
        self.apps.patch_namespaced_deployment_status(
            name, namespace, {"status": {**counts, "updatedReplicas": replicas}})
        return KubeDeployment(name, namespace, dep.metadata.uid, labels, rs_name, pods)

    def lease(self, name: str, holder: str, *, namespace: str = "default",
              duration_seconds: int = 15) -> client.V1Lease:
        """A coordination.k8s.io/v1 Lease held by pod `holder`, with the identity
        controller-runtime's leader election writes: <hostname = pod name>_<uuid>."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = self.coordination.create_namespaced_lease(namespace, {
            "metadata": {"name": name},
            "spec": {"holderIdentity": f"{holder}_{uuid.uuid4()}",
                     "leaseDurationSeconds": duration_seconds, "acquireTime": stamp,
                     "renewTime": stamp, "leaseTransitions": 0}})
        self._objects.append(("lease", namespace, name))
        return lease

    # --- teardown ------------------------------------------------------------------------

    def cleanup(self) -> None:
        errors: list[BaseException] = []
        for pod in self.pods:
            for c in pod.containers.values():
                if c.process is None:
                    continue
                try:
                    # The operator flushes its ground truth on SIGTERM; `sleep` as PID 1 of a
                    # namespace has no handler, so SIGTERM would not end it.
                    c.process.stop(signal.SIGTERM if c.name == pod.container
                                   else signal.SIGKILL)
                except Exception as exc:  # noqa: BLE001 - the rest must still be cleaned
                    errors.append(exc)
        try:
            remove_cgroups([c.cgroup for pod in self.pods for c in pod.containers.values()
                            if c.cgroup is not None])
        except OSError as exc:
            errors.append(exc)
        deleters = {
            "pod": self.core.delete_namespaced_pod,
            "deployment": self.apps.delete_namespaced_deployment,
            "replicaset": self.apps.delete_namespaced_replica_set,
            "lease": self.coordination.delete_namespaced_lease,
        }
        for kind, namespace, name in reversed(self._objects):
            try:
                # No kubelet confirms a graceful deletion: grace 0 removes the pod at once.
                deleters[kind](name, namespace, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    errors.append(exc)
        if self._cgroup2 is not None:
            self._cgroup2.close()
        if errors:
            raise errors[0]

    # --- internals -----------------------------------------------------------------------

    def _hierarchies(self, version: int):
        if version == 1:
            hierarchies = v1_hierarchies()
            if not hierarchies:
                pytest.skip("this machine mounts no cgroup v1 hierarchy")
            return hierarchies
        if version == 2:
            if self._cgroup2 is None:
                self._cgroup2 = Cgroup2Mount()
            return [self._cgroup2.hierarchy]
        raise ValueError(f"cgroup_version must be 1 or 2, not {version!r}")

    def _create_pod(self, name, namespace, labels, containers, images, runtime, driver,
                    cgroup_version, qos, owner, container, node=None) -> KubePod:
        if runtime not in RUNTIME_SCOPE_PREFIX:
            raise ValueError(f"runtime must be one of {sorted(RUNTIME_SCOPE_PREFIX)}")
        images = images or {}
        metadata: dict = {"name": name, "labels": labels or {}}
        if owner:
            metadata["ownerReferences"] = [owner]
        node = node or socket.gethostname()
        obj = self.core.create_namespaced_pod(namespace, {
            "metadata": metadata,
            "spec": {"nodeName": node,
                     "containers": [{"name": c, "image": images.get(c, f"example.com/{c}:v1"),
                                     "resources": _resources(qos)} for c in containers]}})
        self._objects.append(("pod", namespace, name))
        pod = KubePod(
            name=name, namespace=namespace, uid=obj.metadata.uid, node=node,
            labels=dict(obj.metadata.labels or {}), phase="Pending",
            containers={c: Container(c, images.get(c, f"example.com/{c}:v1"),
                                     secrets.token_hex(32), runtime, None)
                        for c in containers},
            container=container, driver=driver, cgroup_version=cgroup_version, qos=qos,
            pod_ip=None, object=obj)
        self.pods.append(pod)
        return pod


def _wait_exec(process: ContainerProcess, timeout: float = 10) -> None:
    """The container's command runs once unshare's child has exec'd it (no longer sh)."""

    def execed():
        children = psutil.Process(process.proc.pid).children()
        return children and children[0].name() != "sh" and children[0].pid

    wait_until(execed, timeout, f"the command of unshare {process.proc.pid} to start")
    process.find_pid()


def _owner_ref(api_version: str, kind: str, owner) -> dict:
    return {"apiVersion": api_version, "kind": kind, "name": owner.metadata.name,
            "uid": owner.metadata.uid, "controller": True, "blockOwnerDeletion": True}


def _conditions(ready: bool, stamp: str) -> list[dict]:
    value = "True" if ready else "False"
    return [{"type": t, "status": "True" if t in ("PodScheduled", "Initialized") else value,
             "lastTransitionTime": stamp}
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")]


def _running_status(pod: KubePod, host_ip: str = "127.0.0.1") -> dict:
    stamp = now()
    return {"status": {
                "phase": "Running", "hostIP": host_ip, "podIP": pod.pod_ip,
                "podIPs": [{"ip": pod.pod_ip}], "startTime": stamp,
                "qosClass": pod.object.status.qos_class,
                "conditions": _conditions(True, stamp),
                "containerStatuses": [{
                    "name": c.name, "image": c.image, "imageID": f"{c.image}@sha256:{'0' * 64}",
                    "containerID": c.status_id, "ready": True, "started": True,
                    "restartCount": 0, "state": {"running": {"startedAt": stamp}}}
                    for c in pod.containers.values()]}}


def _pending_status(pod: KubePod) -> dict:
    stamp = now()
    return {"status": {
                "phase": "Pending", "hostIP": "127.0.0.1", "startTime": stamp,
                "qosClass": pod.object.status.qos_class,
                "conditions": _conditions(False, stamp),
                "containerStatuses": [{
                    "name": c.name, "image": c.image, "imageID": "", "ready": False,
                    "started": False, "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}}}
                    for c in pod.containers.values()]}}
