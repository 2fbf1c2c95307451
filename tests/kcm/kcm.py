"""A real kube-controller-manager 1.20.2 (scripts/build-kube-controller-manager: with DWARF,
and stripped) against the tests' kube-apiserver (tests/kube/cluster.py), the objects its
controllers sync, and what its own log says about each sync.

Ground truth: at -v=4 each of the traced controllers logs one line as its sync function
returns (a `defer` at the function's top, so on every path), naming the key:
  Finished syncing deployment "ns/name" (1.2ms)
  Finished syncing ReplicaSet "ns/name" (...)
  Finished syncing job "ns/name" (...)
  Finished syncing service "ns/name" endpoints. (...)
  Finished syncing service "ns/name" endpoint slices. (...)
  Finished processing PVC ns/name (...)
and the failures its worker logs after a sync returned an error:
  sync "ns/name" failed with <err>                       (ReplicaSet, always)
  Error syncing job: <err>                                (Job, always; no key)
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import end_process, wait_until
from kubernetes import client

KCM_VERSION = "1.20.2"
CACHE = Path(os.environ.get("TRACER_CACHE", Path.home() / ".cache" / "tracer"))
KCM_DIR = CACHE / f"kube-controller-manager-{KCM_VERSION}"
VARIANTS = ("dwarf", "stripped")

PKG = "k8s.io/kubernetes/pkg/controller"
SYNC = {
    "deployment": f"{PKG}/deployment.(*DeploymentController).syncDeployment",
    "replicaset": f"{PKG}/replicaset.(*ReplicaSetController).syncReplicaSet",
    "job": f"{PKG}/job.(*Controller).syncJob",
    "endpoint": f"{PKG}/endpoint.(*Controller).syncService",
    "endpointslice": f"{PKG}/endpointslice.(*Controller).syncService",
    # processPVC(pvcNamespace, pvcName string) error: the go-namespace-name decoder.
    "pvc-protection": f"{PKG}/volume/pvcprotection.(*Controller).processPVC",
}
CONTROLLERS = tuple(SYNC)  # --controllers
# The name each controller's informers wait under ("Caches are synced for NAME").
CACHE_NAMES = {"deployment": "deployment", "replicaset": "ReplicaSet", "job": "job",
               "endpoint": "endpoint", "endpointslice": "endpoint_slice",
               "pvc-protection": "PVC protection"}
# Which sync function each kind of object is keyed in.
KIND_FUNCTIONS = {"Deployment": (SYNC["deployment"],), "ReplicaSet": (SYNC["replicaset"],),
                  "Job": (SYNC["job"],),
                  "Service": (SYNC["endpoint"], SYNC["endpointslice"]),
                  "PersistentVolumeClaim": (SYNC["pvc-protection"],)}

_FINISHED = {
    SYNC["deployment"]: re.compile(r'Finished syncing deployment "([^"]+)"'),
    SYNC["replicaset"]: re.compile(r'Finished syncing ReplicaSet "([^"]+)"'),
    SYNC["job"]: re.compile(r'Finished syncing job "([^"]+)"'),
    SYNC["endpoint"]: re.compile(r'Finished syncing service "([^"]+)" endpoints\.'),
    SYNC["endpointslice"]: re.compile(r'Finished syncing service "([^"]+)" endpoint slices\.'),
    SYNC["pvc-protection"]: re.compile(r"Finished processing PVC (\S+) \("),
}
_RS_FAILED = re.compile(r'sync "([^"]+)" failed with (.*)$')
_JOB_FAILED = re.compile(r"Error syncing job: (.*)$")


def binary(variant: str) -> Path:
    path = KCM_DIR / variant / "kube-controller-manager"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run scripts/setup "
                    "(or scripts/build-kube-controller-manager)")
    return path


@dataclass
class Kcm:
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        end_process(self.proc)  # SIGTERM to this PID, SIGKILL after 10 s


def start_kcm(variant: str, kubeconfig: Path, directory: Path) -> Kcm:
    """kube-controller-manager running the traced controllers only, serving nothing (no
    port to collide with another run), its log at -v=4 in `directory`. Returns once every
    controller's informers have synced (its workers run from then on)."""
    log = directory / f"kcm-{variant}.log"
    proc = subprocess.Popen(
        [str(binary(variant)), "--kubeconfig", str(kubeconfig),
         "--controllers", ",".join(CONTROLLERS),
         "--leader-elect=false", "--use-service-account-credentials=false",
         "--port=0", "--secure-port=0",
         "--logtostderr", "-v", "4"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
    )
    kcm = Kcm(proc, log)

    def synced() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"kube-controller-manager exited with {proc.returncode}:\n"
                                 f"{kcm.text()[-3000:]}")
        text = kcm.text()
        return all(f"Caches are synced for {name} " in text for name in CACHE_NAMES.values())

    try:
        wait_until(synced, 60, "kube-controller-manager's controllers", interval=0.1)
    except BaseException:
        kcm.stop()
        raise
    return kcm


def finished_syncs(text: str) -> dict[tuple[str, str], int]:
    """(function, key) -> how many syncs the log says returned."""
    counts: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        for function, pattern in _FINISHED.items():
            found = pattern.search(line)
            if found:
                counts[function, found.group(1)] = counts.get((function, found.group(1)), 0) + 1
    return counts


def failures(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The ReplicaSet controller's (key, message) and the Job controller's messages, one per
    sync that returned an error."""
    rs, job = [], []
    for line in text.splitlines():
        if found := _RS_FAILED.search(line):
            rs.append((found.group(1), found.group(2)))
        elif found := _JOB_FAILED.search(line):
            job.append(found.group(1))
    return rs, job


# -- the objects --------------------------------------------------------------------------
def _labels(name: str) -> dict:
    return {"app": name}


def _template(name: str, restart: str = "Always") -> dict:
    return {"metadata": {"labels": _labels(name)},
            "spec": {"restartPolicy": restart,
                     "containers": [{"name": "main", "image": "busybox:1.36",
                                     "command": ["sleep", "3600"]}]}}


def create_namespace(api: client.ApiClient, name: str, forbid_pods: bool = False) -> str:
    """`forbid_pods`: a ResourceQuota of no pods, its status written here (no quota
    controller runs), so the API server refuses every Pod in the namespace ("exceeded
    quota"): the ReplicaSet and Job controllers' syncs there return that error."""
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    if forbid_pods:
        none = {"pods": "0"}
        core.create_namespaced_resource_quota(name, {"metadata": {"name": "no-pods"},
                                                     "spec": {"hard": none}})
        core.patch_namespaced_resource_quota_status("no-pods", name, {
            "status": {"hard": none, "used": none}})
    return name


def create_objects(api: client.ApiClient, namespace: str, prefix: str,
                   copies: int) -> dict[str, str]:
    """`copies` Deployments, ReplicaSets, Jobs and Services, and PersistentVolumeClaims
    made and deleted: key -> kind."""
    apps, batch, core = client.AppsV1Api(api), client.BatchV1Api(api), client.CoreV1Api(api)
    made: dict[str, str] = {}
    for i in range(copies):
        name = f"{prefix}-deploy-{i}"
        apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": _labels(name)},
                     "template": _template(name)}})
        made[f"{namespace}/{name}"] = "Deployment"
        name = f"{prefix}-rs-{i}"
        apps.create_namespaced_replica_set(namespace, {
            "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": _labels(name)},
                     "template": _template(name)}})
        made[f"{namespace}/{name}"] = "ReplicaSet"
        name = f"{prefix}-job-{i}"
        batch.create_namespaced_job(namespace, {
            "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": _template(name, "Never")}})
        made[f"{namespace}/{name}"] = "Job"
        name = f"{prefix}-svc-{i}"
        core.create_namespaced_service(namespace, {
            "metadata": {"name": name},
            "spec": {"selector": _labels(f"{prefix}-rs-{i}"),
                     "ports": [{"port": 80, "targetPort": 8080}]}})
        made[f"{namespace}/{name}"] = "Service"
        name = f"{prefix}-pvc-{i}"
        core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}})
        # The API server gives it the protection finalizer itself: the controller has work
        # only when it is deleted (is a Pod using it? if not, take the finalizer off).
        core.delete_namespaced_persistent_volume_claim(name, namespace)
        made[f"{namespace}/{name}"] = "PersistentVolumeClaim"
    return made


def delete_objects(api: client.ApiClient, namespace: str) -> None:
    """The namespace's Deployments, ReplicaSets and Jobs (no garbage collector runs: what
    they made stays, Pods and the Deployments' ReplicaSets included, which are listed too)."""
    apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)
    apps.delete_collection_namespaced_deployment(namespace)
    apps.delete_collection_namespaced_replica_set(namespace)
    batch.delete_collection_namespaced_job(namespace)
