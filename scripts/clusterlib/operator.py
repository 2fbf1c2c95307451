"""`scripts/cluster run-operator`: a static operator binary as a Pod the kubelet runs.

The image holds the binary alone (/operator), written by scripts/oci-image with the tag taken
from the binary's SHA-256, and imported into containerd's k8s.io namespace (the kubelet never
pulls: imagePullPolicy Never). The operator reaches the API server through the cluster's pod
kubeconfig (the bridge's gateway address; admin), mounted by hostPath, named by KUBECONFIG.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import subprocess
import time
from pathlib import Path

from . import node
from .api import Api, ApiError
from .files import Layout

KUBECONFIG_IN_POD = "/var/run/tracer/kubeconfig"
CONTAINER = "operator"
# Waiting reasons after which the kubelet will not get the container running on its own.
FATAL_WAITING = {"ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                 "CrashLoopBackOff", "ImageInspectError"}
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class BadInput(Exception):
    """Exit code 2: the command line asks for something that cannot be."""


class PodFailed(Exception):
    """The pod did not get to Running; the message is the kubelet's reason."""


def _check_static(binary: Path) -> None:
    """An image with nothing but the binary runs only a static one (no ELF interpreter)."""
    try:
        head = binary.read_bytes()[:1 << 20]
    except OSError as exc:
        raise BadInput(f"cannot read {binary}: {exc.strerror}") from None
    if head[:4] != b"\x7fELF" or head[4] != 2:
        raise BadInput(f"{binary} is not a 64-bit ELF executable")
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", head, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            raise BadInput(f"{binary} is dynamically linked: the image holds the binary alone "
                           "(build it with CGO_ENABLED=0)")


def image_for(lay: Layout, binary: Path, user: int | None) -> str:
    """Build and import the image (once per binary and user); return its reference."""
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    repo = re.sub(r"[^a-z0-9._-]+", "-", binary.name.lower()).strip("-._") or "operator"
    ref = f"localhost/tracer-operator/{repo}:{digest}" + (f"-u{user}" if user is not None else "")
    listed = subprocess.run(node.ctr(lay, "images", "ls", "-q"), capture_output=True, text=True)
    if ref in listed.stdout.split():
        return ref
    archive = lay.images / f"{repo}-{ref.rsplit(':', 1)[1]}.tar"
    lay.images.mkdir(parents=True, exist_ok=True)
    argv = [str(node.ROOT / "scripts" / "oci-image"), "--out", str(archive), "--ref", ref,
            "--add", f"{binary}:/operator:0755", "--entrypoint", json.dumps(["/operator"])]
    if user is not None:
        argv += ["--user", f"{user}:{user}"]
    built = subprocess.run(argv, capture_output=True, text=True)
    if built.returncode != 0:
        raise node.ClusterError(f"scripts/oci-image failed: {built.stderr.strip()}")
    node.import_image(lay, archive)
    archive.unlink()  # containerd holds the content now
    return ref


def pod_manifest(name: str, namespace: str, node_name: str, image: str, args: list[str],
                 env: dict[str, str], mounts: dict[str, str], user: int | None,
                 kubeconfig: Path) -> dict:
    volumes = [{"name": "kubeconfig", "hostPath": {"path": str(kubeconfig), "type": "File"}}]
    volume_mounts = [{"name": "kubeconfig", "mountPath": KUBECONFIG_IN_POD, "readOnly": True}]
    for i, (host, in_pod) in enumerate(sorted(mounts.items())):
        volumes.append({"name": f"mount-{i}", "hostPath": {"path": host}})
        volume_mounts.append({"name": f"mount-{i}", "mountPath": in_pod})
    security: dict = {}
    if user is not None:
        security = {"runAsUser": user, "runAsGroup": user, "runAsNonRoot": user != 0}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app": name, "tracer.dev/run-operator": "true"}},
        "spec": {
            # No scheduler in this cluster: the pod names its node.
            "nodeName": node_name,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            "securityContext": security,
            "volumes": volumes,
            "containers": [{
                "name": CONTAINER, "image": image, "imagePullPolicy": "Never", "args": args,
                "env": [{"name": "KUBECONFIG", "value": KUBECONFIG_IN_POD}] +
                       [{"name": k, "value": v} for k, v in env.items()],
                "volumeMounts": volume_mounts,
            }],
        },
    }


def _container_problem(pod: dict) -> str | None:
    """The kubelet's reason a container is not running and will not be on its own: how it
    exited (the exit code says more than CrashLoopBackOff), else the waiting reason."""
    for cs in pod.get("status", {}).get("containerStatuses", []):
        state = cs.get("state", {})
        exited = state.get("terminated") or cs.get("lastState", {}).get("terminated")
        if exited:
            message = (exited.get("message") or "").strip().replace("\n", " ")
            return (f"container {cs['name']} exited ({exited.get('reason', '')}, exit code "
                    f"{exited.get('exitCode')})" + (f": {message}" if message else ""))
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") in FATAL_WAITING:
            message = (waiting.get("message") or "").strip().replace("\n", " ")
            return f"container {cs['name']}: {waiting['reason']}: {message}"
    return None


# Pod events the kubelet repeats while it retries something that will keep failing: the pod
# sandbox (runc, CNI) or a volume. After this many, their message is the reason.
FATAL_EVENTS = {"FailedCreatePodSandBox": 2, "FailedMount": 3}


def _event_problem(api: Api, namespace: str, pod: dict) -> str | None:
    uid = pod.get("metadata", {}).get("uid")
    if not uid:
        return None
    events = api.get(f"/api/v1/namespaces/{namespace}/events"
                     f"?fieldSelector=involvedObject.uid%3D{uid}").get("items", [])
    for e in events:
        need = FATAL_EVENTS.get(e.get("reason", ""))
        if need and e.get("type") == "Warning" and (e.get("count") or 1) >= need:
            return f"{e['reason']}: {e.get('message', '').strip()}"
    return None


def wait_running(api: Api, namespace: str, name: str, timeout: float = 90,
                 settle: float = 2.0) -> dict:
    """Until the container runs and is still running SETTLE seconds later (an operator that
    dies on its first API request shows Running for a moment)."""
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    deadline = time.monotonic() + timeout
    running_since = None
    pod: dict = {}
    while time.monotonic() < deadline:
        pod = api.get(path)
        problem = _container_problem(pod) or _event_problem(api, namespace, pod)
        if problem:
            raise PodFailed(f"pod {namespace}/{name}: {problem}")
        statuses = pod.get("status", {}).get("containerStatuses", [])
        if pod.get("status", {}).get("phase") == "Running" and statuses and \
                all("running" in cs.get("state", {}) for cs in statuses):
            running_since = running_since or time.monotonic()
            if time.monotonic() - running_since >= settle:
                return pod
        time.sleep(0.25)
    status = json.dumps(pod.get("status", {}), indent=1)
    raise PodFailed(f"pod {namespace}/{name} not Running after {timeout:.0f} s; status:\n{status}")


def run_operator(lay: Layout, name: str, binary: Path, args: list[str], env: dict[str, str],
                 mounts: dict[str, str], user: int | None, namespace: str,
                 timeout: float) -> dict:
    if not NAME_RE.match(name):
        raise BadInput(f"pod name {name!r} is not a DNS-1123 label (lowercase, digits, '-')")
    if not binary.is_file():
        raise BadInput(f"{binary}: no such file")
    _check_static(binary)
    for host, in_pod in mounts.items():
        if not Path(host).is_absolute() or not in_pod.startswith("/"):
            raise BadInput(f"--mount {host}:{in_pod}: both paths must be absolute")
        if not Path(host).exists():
            raise BadInput(f"--mount {host}:{in_pod}: {host} does not exist")
    st = node.read_state(lay)
    if st is None or not node.is_up(lay):
        raise BadInput(f"no cluster running in {lay.root}: run scripts/cluster up first")
    api = node.admin_api(lay, st)
    path = f"/api/v1/namespaces/{namespace}/pods"
    try:
        api.get(f"{path}/{name}")
        raise BadInput(f"pod {namespace}/{name} already exists")
    except ApiError as exc:
        if exc.status != 404:
            raise
    # No controller makes a new namespace's `default` ServiceAccount here; admission needs it.
    api.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "default"}})
    image = image_for(lay, binary, user)
    api.request("POST", path, pod_manifest(name, namespace, st["node"], image, args, env,
                                           mounts, user, lay.pod_kubeconfig))
    return wait_running(api, namespace, name, timeout)
