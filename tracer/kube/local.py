"""A pod's container as a local process: the tracer runs on the pod's node (or in a pod
with the host's PID namespace)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from tracer.errors import UserError
from tracer.kube.pods import PodTarget
from tracer.targets.containers import container_processes, main_process


@dataclass(frozen=True)
class LocalContainer:
    target: PodTarget
    pid: int  # host PID of the container's main process
    ns_pid: int
    how: str  # cgroup path or mountinfo entry that matched

    def tags(self) -> dict:
        return {"k8s": self.target.tags()}


def locate(target: PodTarget) -> LocalContainer:
    """The container's main process on this node, or a clear error that says where it is."""
    procs = container_processes(target.container_id)
    main = main_process(procs)
    if main is None:
        here = socket.gethostname()
        node = target.node or "no node"
        raise UserError(
            f"the process of {target.namespace}/{target.pod} (container {target.container}) is "
            f"not on this machine ({here}; the pod runs on {node}): run the tracer on that "
            "node, or trace from here with --agent ephemeral (or --agent node)")
    return LocalContainer(target, main.pid, main.ns_pid, main.cgroup)
