"""`tracer attach` for pods traced through agents: several pods at once (-l), or from anywhere
(--agent ephemeral|node). One pod on this node is traced in-process (front/attach_cmd.py)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from tracer.errors import UserError
from tracer.front.display import Display, multi_screen, receiver_screen
from tracer.front.options import TraceOptions
from tracer.front.tracing import run_watched
from tracer.kube.targets import KubeTargets


def trace_local_pods(kube: KubeTargets, output: str, trace: TraceOptions,
                     functions: list[str], watch: tuple[str, ...]) -> None:
    """Every selected pod on this node, each by a local agent, into one file."""
    from tracer.kube.multi import MultiRun
    from tracer.remote.receiver import ProcessStream

    display = Display(trace.quiet, trace.plain)
    sources = []
    for container in kube.local():
        argv = [sys.executable, "-m", "tracer", "agent", *trace.agent_args(container.pid)]
        sources.append((container.target, ProcessStream(argv),
                        {"kind": "local", "pid": container.pid}))
    names = ", ".join(pod.pod for pod, _, _ in sources)
    display.on_status(f"tracing {len(sources)} pods ({names}) into {output}; Ctrl-C to detach")
    run = MultiRun(sources, output, trace.duration, display.on_status)
    run.on_span = display.on_span
    watcher = kube.watcher(watch, functions)
    display.finish(run_watched(display, run, multi_screen(run), watcher))


def trace_via_agents(kube: KubeTargets, kind: str, image: str, timeout: float, output: str,
                     trace: TraceOptions, watch: tuple[str, ...]) -> None:
    """Each selected pod by an agent next to it (ephemeral container or node pod), streamed
    back through the API server's attach."""
    from tracer.kube import agent_pods
    from tracer.kube.multi import MultiRun
    from tracer.remote.receiver import Receiver

    display = Display(trace.quiet, trace.plain)
    started: list[agent_pods.AgentContainer] = []
    sources = []
    try:
        for pod in kube.pods:
            agent = agent_pods.start(kube.conn, pod, kind, image, trace.agent_args(),
                                 display.on_status)
            started.append(agent)
            display.on_status(f"{pod.pod}: waiting for the agent {agent.container} to start")
            agent_pods.wait_running(kube.conn, agent, image, timeout)
            stream = agent_pods.AttachStream(kube.conn, agent, pod)
            sources.append((pod, stream, {"kind": kind, "agent_pod": agent.pod,
                                          "agent_container": agent.container,
                                          "pod": pod.pod, "namespace": pod.namespace}))
        # The default watch follows the reconcilers' kinds, which the agents' headers name.
        watcher = kube.watcher(watch, []) if watch else WatchOnHeader(kube)
        on_header = watcher.header_arrived if isinstance(watcher, WatchOnHeader) else None
        if len(sources) == 1:
            pod, stream, via = sources[0]
            run = Receiver(stream, output, via=via, tags={"k8s": pod.tags()},
                           duration=trace.duration, on_span=display.on_span,
                           on_status=display.on_status, on_header=on_header)
            screen = receiver_screen(run)
        else:
            run = MultiRun(sources, output, trace.duration, display.on_status, on_header)
            run.on_span = display.on_span
            screen = multi_screen(run)
        outcome = run_watched(display, run, screen, watcher)
    finally:
        for agent in started:
            agent_pods.remove(kube.conn, agent)
    display.finish(outcome)


class WatchOnHeader:
    """The default watch of a run through agents: the kinds the reconcilers are named after,
    known once an agent's header (its plan) has come. Started then, before that header is
    written, so the trace holds every change from its start on."""

    def __init__(self, kube: KubeTargets) -> None:
        self._kube = kube
        self._watcher = None
        self._lock = threading.Lock()
        self._stopped = False
        self._record: Callable[[dict], None] = lambda line: None
        self._on_status: Callable[[str], None] = lambda message: None

    def start(self, record: Callable[[dict], None], on_status: Callable[[str], None]) -> None:
        self._record, self._on_status = record, on_status

    def header_arrived(self, header: dict) -> None:
        """The first header starts the watch (with several pods, their first)."""
        with self._lock:
            if self._stopped or self._watcher is not None:
                return
            try:
                watcher = self._kube.watcher((), list(header.get("functions") or []))
                if watcher is not None:
                    watcher.start(self._record, self._on_status)
            except UserError as exc:
                self._on_status(f"warning: no watch events: {exc}; --watch chooses what to "
                                "watch, --watch none nothing")
                self._stopped = True
                return
            self._watcher = watcher

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._watcher is not None:
                self._watcher.stop()

    @property
    def events(self) -> int:
        return self._watcher.events if self._watcher is not None else 0

    def describe(self) -> list[str]:
        return self._watcher.describe() if self._watcher is not None else []
