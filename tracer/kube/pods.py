"""From kubectl's words (POD, pod/NAME, deploy/NAME, -l SELECTOR) to running containers."""

from __future__ import annotations

from dataclasses import dataclass

from tracer.errors import UserError
from tracer.kube.client import Connection, call

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
POD_KINDS = ("pod", "pods", "po")
DEPLOY_KINDS = ("deploy", "deployment", "deployments", "deployment.apps", "deployments.apps")


@dataclass(frozen=True)
class PodTarget:
    pod: str
    namespace: str
    container: str
    container_id: str  # as the status gives it: containerd://<id>
    node: str
    uid: str
    chosen_because: str = ""  # why this pod, when the user named a deployment

    def tags(self) -> dict:
        """What every span and the header carry about where the process runs."""
        return {"pod": self.pod, "namespace": self.namespace, "container": self.container,
                "node": self.node, "container_id": self.container_id}


def parse_target(text: str) -> tuple[str, str]:
    """("pod" | "deploy", name) from `NAME`, `pod/NAME`, `deploy/NAME`."""
    if "/" not in text:
        return "pod", text
    kind, _, name = text.partition("/")
    if not name or "/" in name:
        raise UserError(f"{text!r} is not a pod or deployment name: use POD, pod/NAME or "
                        "deploy/NAME")
    if kind.lower() in POD_KINDS:
        return "pod", name
    if kind.lower() in DEPLOY_KINDS:
        return "deploy", name
    raise UserError(f"cannot trace a {kind!r}: name a pod (POD, pod/NAME), a deployment "
                    "(deploy/NAME) or select pods with -l SELECTOR")


def _container(pod, wanted: str | None) -> str:
    names = [c.name for c in pod.spec.containers]
    listed = ", ".join(names)
    if wanted:
        if wanted not in names:
            raise UserError(f"container {wanted!r} not found in pod {pod.metadata.name} "
                            f"(containers: {listed})")
        return wanted
    if len(names) == 1:
        return names[0]
    default = (pod.metadata.annotations or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if default in names:
        return default
    raise UserError(f"pod {pod.metadata.name} has {len(names)} containers ({listed}): choose "
                    "one with -c NAME")


def _target(pod, wanted: str | None, because: str = "") -> PodTarget:
    name, ns = pod.metadata.name, pod.metadata.namespace
    phase = pod.status.phase if pod.status else None
    if phase != "Running":
        raise UserError(f"pod {name} is {phase or 'not scheduled'}, not Running: nothing to "
                        "trace yet (kubectl get pod " + name + ")")
    container = _container(pod, wanted)
    status = next((s for s in pod.status.container_statuses or [] if s.name == container), None)
    if status is None or status.state is None or status.state.running is None:
        waiting = status.state.waiting if status and status.state else None
        why = f" ({waiting.reason})" if waiting and waiting.reason else ""
        raise UserError(f"container {container} of pod {name} is not running{why}")
    if not status.container_id:
        raise UserError(f"container {container} of pod {name} has no container id yet")
    return PodTarget(name, ns, container, status.container_id, pod.spec.node_name or "",
                     pod.metadata.uid, because)


def _selector_string(selector) -> str:
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for expr in selector.match_expressions or []:
        values = ",".join(expr.values or [])
        op = expr.operator
        if op == "In":
            parts.append(f"{expr.key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{expr.key} notin ({values})")
        elif op == "Exists":
            parts.append(expr.key)
        elif op == "DoesNotExist":
            parts.append(f"!{expr.key}")
    return ",".join(parts)


def _ready(pod) -> bool:
    return pod.status is not None and pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _leader(conn: Connection, namespace: str, pods: list) -> tuple[object, str] | None:
    """The pod holding a leader-election Lease: controller-runtime's identity is
    `<hostname>_<uuid>`, and a pod's hostname is its name."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        leases = client.CoordinationV1Api(conn.api).list_namespaced_lease(namespace).items
    except ApiException:
        return None  # no right to read leases: fall back to the first ready pod
    by_name = {p.metadata.name: p for p in pods}
    for lease in leases:
        holder = (lease.spec.holder_identity or "") if lease.spec else ""
        host = holder.split("_", 1)[0]
        if host in by_name:
            return by_name[host], f"holds the leader-election lease {lease.metadata.name}"
    return None


def _deployment_pod(conn: Connection, namespace: str, name: str, wanted: str | None
                    ) -> PodTarget:
    from kubernetes import client

    apps = client.AppsV1Api(conn.api)
    deploy = call(apps.read_namespaced_deployment, "get", "deployments", namespace, name,
                   name=name, namespace=namespace)
    core = client.CoreV1Api(conn.api)
    selector = _selector_string(deploy.spec.selector)
    pods = call(core.list_namespaced_pod, "list", "pods", namespace,
                 namespace=namespace, label_selector=selector).items
    running = sorted((p for p in pods if p.status and p.status.phase == "Running"),
                     key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))
    if not running:
        raise UserError(f"deployment {name} has no running pod ({len(pods)} pod(s) match "
                        f"{selector})")
    leader = _leader(conn, namespace, running)
    if leader:
        return _target(leader[0], wanted, leader[1])
    ready = [p for p in running if _ready(p)] or running
    return _target(ready[0], wanted, f"the first ready of {len(running)} running pod(s); "
                   "no leader-election lease names one")


def resolve(conn: Connection, target: str | None, selector: str | None,
            namespace: str | None, container: str | None) -> list[PodTarget]:
    """The containers to trace: one for POD or deploy/NAME, every running match for -l."""
    from kubernetes import client

    ns = namespace or conn.namespace
    core = client.CoreV1Api(conn.api)
    if selector is not None:
        if target:
            raise UserError("give either a pod (or deploy/NAME) or -l SELECTOR, not both")
        pods = call(core.list_namespaced_pod, "list", "pods", ns,
                     namespace=ns, label_selector=selector).items
        running = sorted((p for p in pods if p.status and p.status.phase == "Running"),
                         key=lambda p: p.metadata.name)
        if not running:
            raise UserError(f"no running pod matches -l {selector} in namespace {ns} "
                            f"({len(pods)} pod(s) match, none running)")
        return [_target(p, container) for p in running]
    if not target:
        raise UserError("name a pod (POD, pod/NAME, deploy/NAME), select pods with -l, or "
                        "give a PID")
    kind, name = parse_target(target)
    if kind == "deploy":
        return [_deployment_pod(conn, ns, name, container)]
    pod = call(core.read_namespaced_pod, "get", "pods", ns, name,
                name=name, namespace=ns)
    return [_target(pod, container)]
