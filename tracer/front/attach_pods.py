"""`tracer attach` for pods traced through agents: several pods at once (-l), or from anywhere
(--agent ephemeral|node). One pod on this node is traced in-process (front/attach_cmd.py)."""

from __future__ import annotations

import sys

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
        watcher = kube.watcher(watch, [])
        if len(sources) == 1:
            pod, stream, via = sources[0]
            run = Receiver(stream, output, via=via, tags={"k8s": pod.tags()},
                           duration=trace.duration, on_span=display.on_span,
                           on_status=display.on_status)
            outcome = run_watched(display, run, receiver_screen(run), watcher)
        else:
            run = MultiRun(sources, output, trace.duration, display.on_status)
            run.on_span = display.on_span
            outcome = run_watched(display, run, multi_screen(run), watcher)
    finally:
        for agent in started:
            agent_pods.remove(kube.conn, agent)
    display.finish(outcome)
