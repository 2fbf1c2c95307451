"""The pods to trace (`tracer attach POD`, -l SELECTOR): named in kubectl's words, found as
local processes, and the watch of their objects."""

from __future__ import annotations

from dataclasses import dataclass

from tracer.kube.client import Connection, connect
from tracer.kube.local import LocalContainer, locate
from tracer.kube.pods import PodTarget, resolve
from tracer.kube.watch import Watcher, kinds_of


@dataclass
class KubeTargets:
    conn: Connection
    namespace: str
    pods: list[PodTarget]

    def local(self) -> list[LocalContainer]:
        """Each pod's container as a process of this machine (or a clear error)."""
        return [locate(pod) for pod in self.pods]

    def watcher(self, names: tuple[str, ...], functions: list[str]) -> Watcher | None:
        """--watch's resources; by default the kinds the reconcilers are named after that
        the API server has (none is an error then: the operator may reconcile other kinds)."""
        if names == ("none",):
            return None
        if names:
            return Watcher(self.conn, list(names), self.namespace)
        kinds = kinds_of(functions)
        if not kinds:
            return None
        watcher = Watcher(self.conn, kinds, self.namespace, skip_missing=True)
        return watcher if watcher.resources else None


def find_pods(target: str | None, selector: str | None, namespace: str | None,
              container: str | None, context: str | None, kubeconfig: str | None
              ) -> KubeTargets:
    conn = connect(kubeconfig, context, target or "")
    pods = resolve(conn, target, selector, namespace, container)
    return KubeTargets(conn, namespace or conn.namespace, pods)
