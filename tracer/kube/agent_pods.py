"""The agent pods: tracing from anywhere, by an agent started next to the operator and
streamed back over the API.

`--agent ephemeral` adds an ephemeral container to the operator's pod (kubectl debug
--target's way: it shares the operator container's PID namespace, with SYS_PTRACE and no other
right); `--agent node` starts a short-lived pod on the operator's node with the host's PID
namespace, removed afterwards. Either runs `tracer agent`, whose JSON lines come back through
the pod's attach stream.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from tracer.errors import UserError
from tracer.kube.client import Connection, api_error, call
from tracer.kube.pods import PodTarget

START_TIMEOUT_S = 60.0
# Waiting reasons that mean the image is not there and will not be.
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
# Waiting reasons of a container on its way up.
STARTING = ("ContainerCreating", "PodInitializing")


@dataclass
class AgentContainer:
    pod: str  # where the agent runs (the operator's pod, or the node pod)
    namespace: str
    container: str
    kind: str  # "ephemeral" or "node"


def agent_name() -> str:
    return f"tracer-agent-{secrets.token_hex(3)}"


def _server_minor(conn: Connection) -> tuple[int, str]:
    from kubernetes import client

    version = call(client.VersionApi(conn.api).get_code, "get", "version", None)
    digits = "".join(ch for ch in version.minor if ch.isdigit())
    return int(digits or 0), version.git_version


def ephemeral_spec(name: str, image: str, target: PodTarget, args: list[str],
                   ptrace: bool = True) -> dict:
    spec = {
        "name": name,
        "image": image,
        "command": ["tracer", "agent"],
        "args": args,
        # The agent stops when its input ends: with stdinOnce, when our attach closes.
        "stdin": True,
        "stdinOnce": True,
        "tty": False,
        "targetContainerName": target.container,
    }
    if ptrace:
        # ptrace needs this and nothing more; the operator's own user and rights stay as
        # they are.
        spec["securityContext"] = {"capabilities": {"add": ["SYS_PTRACE"]}}
    return spec


def add_ephemeral(conn: Connection, target: PodTarget, image: str, args: list[str],
                  on_status: Callable[[str], None]) -> AgentContainer:
    """Ask the API server for the ephemeral container; before 1.22 the subresource takes an
    `EphemeralContainers` object, since then a Pod."""
    minor, git_version = _server_minor(conn)
    name = agent_name()
    # Before 1.21 an ephemeral container may not have a securityContext at all.
    ptrace = minor >= 21
    if not ptrace:
        on_status(f"warning: the API server ({git_version}) takes no securityContext on "
                  "ephemeral containers (1.21 and later do): the agent gets no SYS_PTRACE and "
                  "can trace the operator only where the runtime lets it (same user, "
                  "ptrace_scope 0); --agent node always can")
    spec = ephemeral_spec(name, image, target, args, ptrace)
    if minor >= 22:
        body = {"spec": {"ephemeralContainers": [spec]}}
    else:
        body = {"apiVersion": "v1", "kind": "EphemeralContainers",
                "metadata": {"name": target.pod}, "ephemeralContainers": [spec]}
    from kubernetes import client

    try:
        # Not decoded: before 1.22 the answer is an EphemeralContainers object, not a Pod.
        client.CoreV1Api(conn.api).patch_namespaced_pod_ephemeralcontainers(
            target.pod, target.namespace, body,
            _content_type="application/strategic-merge-patch+json", _preload_content=False)
    except Exception as exc:  # noqa: BLE001 - said in one line below
        status = getattr(exc, "status", None)
        if status in (404, 405):
            raise UserError(
                f"the API server ({git_version}) does not serve pods/ephemeralcontainers "
                "(ephemeral containers are off before Kubernetes 1.23 unless the "
                "EphemeralContainers feature gate is on): use --agent node, or run the "
                "tracer on the pod's node") from None
        raise _refused(api_error(exc, "patch", "pods/ephemeralcontainers", target.namespace,
                                 target.pod)) from None
    return AgentContainer(target.pod, target.namespace, name, "ephemeral")


def _refused(error: UserError) -> UserError:
    """An admission refusal says what the agent needs: Pod Security's baseline and restricted
    levels forbid SYS_PTRACE (and hostPID, for the node agent)."""
    if "violates PodSecurity" in str(error):
        return UserError(f"{error} (the agent needs SYS_PTRACE, and --agent node also hostPID: "
                         "the namespace's pod-security.kubernetes.io/enforce level must be "
                         "privileged)")
    return error


def node_pod_spec(name: str, image: str, target: PodTarget, args: list[str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": target.namespace,
                     "labels": {"app.kubernetes.io/name": "tracer-agent",
                                "tracer.dev/target-pod": target.pod}},
        "spec": {
            "nodeName": target.node,
            "hostPID": True,
            "restartPolicy": "Never",
            # The agent talks to no API server: its pod gets no token to lose.
            "automountServiceAccountToken": False,
            # Never outlive the trace by long, even if the tracer dies before removing it.
            "activeDeadlineSeconds": 24 * 3600,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "agent",
                "image": image,
                "command": ["tracer", "agent"],
                "args": ["--container-id", target.container_id, *args],
                "stdin": True,
                "stdinOnce": True,
                "tty": False,
                "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}},
            }],
        },
    }


def add_node_pod(conn: Connection, target: PodTarget, image: str, args: list[str]
                 ) -> AgentContainer:
    from kubernetes import client

    if not target.node:
        raise UserError(f"pod {target.pod} has no node yet: nothing to trace")
    name = agent_name()
    body = node_pod_spec(name, image, target, args)
    try:
        call(client.CoreV1Api(conn.api).create_namespaced_pod, "create", "pods",
             target.namespace, namespace=target.namespace, body=body)
    except UserError as exc:
        raise _refused(exc) from None
    return AgentContainer(name, target.namespace, "agent", "node")


def start(conn: Connection, target: PodTarget, kind: str, image: str, args: list[str],
          on_status: Callable[[str], None]) -> AgentContainer:
    if kind == "ephemeral":
        return add_ephemeral(conn, target, image, args, on_status)
    return add_node_pod(conn, target, image, args)


def remove(conn: Connection, agent: AgentContainer) -> None:
    """The node pod goes; an ephemeral container cannot be removed, it ends with the agent."""
    from kubernetes import client

    if agent.kind != "node":
        return
    try:
        client.CoreV1Api(conn.api).delete_namespaced_pod(agent.pod, agent.namespace,
                                                         grace_period_seconds=0)
    except Exception:  # noqa: BLE001, S110 - already gone or no right: nothing more to do
        pass


def _running(pod, agent: AgentContainer) -> tuple[bool, str]:
    statuses = (pod.status.ephemeral_container_statuses if agent.kind == "ephemeral"
                else pod.status.container_statuses) or []
    for status in statuses:
        if status.name != agent.container or status.state is None:
            continue
        if status.state.running is not None:
            return True, ""
        if status.state.terminated is not None:
            t = status.state.terminated
            return False, f"it ended ({t.reason or ''} exit code {t.exit_code})"
        if status.state.waiting is not None:
            w = status.state.waiting
            if w.reason in PULL_FAILURES:
                return False, f"its image cannot be pulled ({w.reason}: {w.message or ''})"
            if w.reason and w.reason not in STARTING:
                # The kubelet's own words (CreateContainerError, RunContainerError, ...).
                return False, f"the kubelet says {w.reason}: {w.message or ''}"
    return False, ""


def wait_running(conn: Connection, agent: AgentContainer, image: str,
                 timeout: float = START_TIMEOUT_S) -> None:
    from kubernetes import client

    core = client.CoreV1Api(conn.api)
    deadline = time.monotonic() + timeout
    while True:
        pod = call(core.read_namespaced_pod, "get", "pods", agent.namespace, agent.pod,
                   name=agent.pod, namespace=agent.namespace)
        running, failure = _running(pod, agent)
        if running:
            return
        if failure:
            raise UserError(f"the agent container {agent.container} did not start: {failure} "
                            f"(image {image}; set another with --agent-image)")
        if time.monotonic() >= deadline:
            raise UserError(
                f"the agent container {agent.container} in pod {agent.pod} did not start within "
                f"{timeout:g} s (image {image}; is the node's kubelet pulling it? set another "
                "with --agent-image)")
        time.sleep(0.5)


def target_gone(conn: Connection, target: PodTarget, wait_s: float = 15.0
                ) -> tuple[str, bool] | None:
    """(what the API server says of the operator, whether its process has surely ended):
    its pod deleted, its container ended or replaced. A pod only being deleted is watched
    for up to `wait_s` (its grace period may still run the operator). None when it runs on,
    or the API server cannot say."""
    from kubernetes import client

    where = f"{target.namespace}/{target.pod}"
    core = client.CoreV1Api(conn.api)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pod = core.read_namespaced_pod(target.pod, target.namespace)
        except Exception as exc:  # noqa: BLE001 - only a 404 tells anything
            return (f"the operator's pod {where} was deleted", True) \
                if getattr(exc, "status", None) == 404 else None
        for status in pod.status.container_statuses or []:
            if status.name != target.container:
                continue
            if status.container_id and status.container_id != target.container_id:
                return (f"the operator's container {target.container} in {where} was "
                        "restarted", True)
            ended = status.state.terminated if status.state else None
            if ended is not None:
                return (f"the operator's container {target.container} in {where} ended "
                        f"({ended.reason or ''} exit code {ended.exit_code})", True)
        if pod.metadata.deletion_timestamp is None:
            return None
        if time.monotonic() >= deadline:
            return f"the operator's pod {where} is being deleted", False
        time.sleep(0.5)


class AttachStream:
    """The agent's attach stream as the receiver wants it: lines in, bytes out."""

    def __init__(self, conn: Connection, agent: AgentContainer, target: PodTarget) -> None:
        from kubernetes import client
        from kubernetes.stream import stream

        self._conn = conn
        self._target = target
        core = client.CoreV1Api(conn.api)
        try:
            self._ws = stream(core.connect_get_namespaced_pod_attach, agent.pod,
                              agent.namespace, container=agent.container, stdin=True,
                              stdout=True, stderr=True, tty=False, _preload_content=False)
        except Exception as exc:  # noqa: BLE001 - ApiException or connection: one line
            raise api_error(exc, "create", "pods/attach", agent.namespace, agent.pod) from None
        self._buffer = ""
        self.stderr: list[str] = []

    def read_line(self) -> bytes:
        """The next line, or b"" when the stream has ended."""
        while "\n" not in self._buffer:
            if not self._ws.is_open():
                rest, self._buffer = self._buffer, ""
                return rest.encode()
            self._ws.update(timeout=1)
            if self._ws.peek_stdout():
                self._buffer += self._ws.read_stdout()
            if self._ws.peek_stderr():
                self.stderr.append(self._ws.read_stderr())
        line, _, self._buffer = self._buffer.partition("\n")
        return (line + "\n").encode()

    def write(self, data: bytes) -> None:
        self._ws.write_stdin(data.decode())

    def why_ended(self) -> tuple[str, bool] | None:
        """Asked when the stream ends with no end line: an operator gone with its pod takes
        the agent with it (the ephemeral agent shares its PID namespace, whose init it is)."""
        return target_gone(self._conn, self._target)

    def describe(self) -> str:
        tail = " ".join("".join(self.stderr).split())[-400:]
        return f" (the agent's stderr: {tail})" if tail else ""

    def close(self) -> None:
        self._ws.close()

