"""`scripts/cluster run-operator`: an operator binary as a Pod the kubelet runs.

The image holds the binary (/operator) and, for a dynamically linked one, what a distroless/cc
image would give it: its ELF interpreter and the shared libraries it loads, taken from this
machine at the paths they have here; nothing else. It is written by scripts/oci-image with the
tag taken from the SHA-256 of the binary (and those files), and imported into containerd's
k8s.io namespace (the kubelet never pulls: imagePullPolicy Never). The operator reaches the
API server through the cluster's pod kubeconfig (the bridge's gateway address; admin), mounted
by hostPath, named by KUBECONFIG.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

from tracer.terminal import visible

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


def _read_elf(binary: Path) -> tuple[str | None, list[str], list[str]]:
    """(PT_INTERP, DT_NEEDED, DT_RUNPATH + DT_RPATH) of a 64-bit ELF executable."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile

    try:
        f = binary.open("rb")
    except OSError as exc:
        raise BadInput(f"cannot read {binary}: {exc.strerror}") from None
    with f:
        try:
            elf = ELFFile(f)
        except ELFError:
            raise BadInput(f"{binary} is not an ELF executable") from None
        if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
            raise BadInput(f"{binary} is not an x86-64 ELF executable (the node is amd64)")
        interp, needed, paths = None, [], []
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_INTERP":
                interp = seg.get_interp_name()
            elif isinstance(seg, DynamicSegment):
                for tag in seg.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        paths.append(tag.runpath)
                    elif tag.entry.d_tag == "DT_RPATH":
                        paths.append(tag.rpath)
    return interp, needed, paths


_LDD_LINE = re.compile(r"^\s*(\S+)(?: => (\S+|not found))?(?: \(0x[0-9a-f]+\))?\s*$")


def runtime_files(binary: Path) -> list[tuple[str, str]]:
    """What a dynamically linked binary needs to start in an image of its own, the way a
    distroless/cc image has it: its ELF interpreter and every shared library it loads
    (DT_NEEDED, and theirs), resolved on this machine by its dynamic loader (`ldd`, with no
    LD_LIBRARY_PATH or LD_PRELOAD) and put at the path they have here. [(host path, path in
    the image)], the interpreter first; [] for a static binary."""
    interp, needed, paths = _read_elf(binary)
    if interp is None:
        return []  # static (or static-pie): the binary alone, as before
    if any("$ORIGIN" in p or "${ORIGIN}" in p for p in paths):
        raise BadInput(f"{binary}: its RUNPATH/RPATH uses $ORIGIN, and in the image the "
                       "binary is /operator: link it without, or build a static binary")
    if not Path(interp).is_file():
        raise BadInput(f"{binary}: its ELF interpreter {interp} is not on this machine")
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"}
    listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
    if listed.returncode != 0:
        raise BadInput(f"{binary}: ldd cannot list its libraries: "
                       f"{(listed.stderr or listed.stdout).strip()}")
    files = [(interp, interp)]
    resolved: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        m = _LDD_LINE.match(line)
        if not m:
            continue
        name, where = m.group(1), m.group(2)
        if where == "not found":
            raise BadInput(f"{binary} needs {name}, which this machine does not have")
        if where is None:
            # The vDSO (the kernel's, in no file) or the interpreter itself.
            continue
        resolved[name] = where
        if where != interp and Path(where).resolve() != Path(interp).resolve():
            files.append((where, where))
    missing = [n for n in needed if n not in resolved and n != Path(interp).name]
    if missing:
        raise BadInput(f"{binary} needs {', '.join(missing)}: ldd did not resolve them")
    return files


def image_for(lay: Layout, binary: Path, user: int | None) -> tuple[str, list[str]]:
    """Build and import the image (once per binary, its libraries and user); return its
    reference and the paths in it."""
    extra = runtime_files(binary)
    sha = hashlib.sha256(binary.read_bytes())
    for host, in_image in extra:  # a static binary's tag stays the binary's own hash
        sha.update(f"\0{in_image}\0".encode() + Path(host).read_bytes())
    digest = sha.hexdigest()[:16]
    in_image = ["/operator", *(dest for _, dest in extra)]
    repo = re.sub(r"[^a-z0-9._-]+", "-", binary.name.lower()).strip("-._") or "operator"
    ref = f"localhost/tracer-operator/{repo}:{digest}" + (f"-u{user}" if user is not None else "")
    listed = subprocess.run(node.ctr(lay, "images", "ls", "-q"), capture_output=True, text=True)
    if ref in listed.stdout.split():
        return ref, in_image
    archive = lay.images / f"{repo}-{ref.rsplit(':', 1)[1]}.tar"
    lay.images.mkdir(parents=True, exist_ok=True)
    argv = [str(node.ROOT / "scripts" / "oci-image"), "--out", str(archive), "--ref", ref,
            "--add", f"{binary}:/operator:0755", "--entrypoint", json.dumps(["/operator"])]
    for host, dest in extra:
        argv += ["--add", f"{host}:{dest}"]  # the file a link names, its mode kept
    if user is not None:
        argv += ["--user", f"{user}:{user}"]
    built = subprocess.run(argv, capture_output=True, text=True)
    if built.returncode != 0:
        raise node.ClusterError(f"scripts/oci-image failed: {built.stderr.strip()}")
    node.import_image(lay, archive)
    archive.unlink()  # containerd holds the content now
    return ref, in_image


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
            # The termination message is the operator's own text: one line, inert.
            message = visible((exited.get("message") or "").strip())
            return (f"container {visible(cs['name'])} exited "
                    f"({visible(exited.get('reason', ''))}, exit code "
                    f"{visible(exited.get('exitCode'))})" + (f": {message}" if message else ""))
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") in FATAL_WAITING:
            message = visible((waiting.get("message") or "").strip())
            return f"container {visible(cs['name'])}: {waiting['reason']}: {message}"
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
            return f"{e['reason']}: {visible((e.get('message') or '').strip())}"
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
    runtime_files(binary)  # refuses what cannot run before anything is made
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
    image, files = image_for(lay, binary, user)
    api.request("POST", path, pod_manifest(name, namespace, st["node"], image, args, env,
                                           mounts, user, lay.pod_kubeconfig))
    pod = wait_running(api, namespace, name, timeout)
    pod["imageFiles"] = files
    return pod
