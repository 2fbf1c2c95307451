"""`tracer attach TARGET`: a running operator, named by PID or as kubectl names a pod."""

from __future__ import annotations

import os

import click

from tracer.errors import UserError
from tracer.front.options import AGENT_IMAGE, KubeOptions, TraceOptions, kube_options, trace_options
from tracer.front.prepare import default_output, prepare_process
from tracer.front.tracing import trace_here
from tracer.output import check_output
from tracer.terminal import echo


@click.command()
@click.argument("target", required=False)
@trace_options
@kube_options
def attach(target: str | None, trace: TraceOptions, kube: KubeOptions) -> None:
    """Attach to a running operator and record every reconcile call until Ctrl-C.

    TARGET is a PID, or a pod as kubectl names it: POD, pod/NAME, deploy/NAME (the pod
    holding the leader-election lease, else the first ready one); or use -l SELECTOR."""
    if target is None and kube.selector is None:
        raise UserError("name what to trace: a PID, a pod (POD, pod/NAME, deploy/NAME) or "
                        "-l SELECTOR")
    if target is not None and target.isdigit() and kube.selector is None:
        _attach_pid(int(target), trace, kube)
    else:
        _attach_pods(target, trace, kube)


def _attach_pid(pid: int, trace: TraceOptions, kube: KubeOptions) -> None:
    if kube.container or kube.agent:
        raise UserError(f"{pid} is a PID: -c and --agent are for pods")
    prepared = prepare_process(pid, trace)
    out = check_output(trace.output or default_output(prepared.target.name, pid), "--output",
                       trace.force)
    watcher = None
    if kube.names_a_cluster():
        # An operator run outside the cluster (Kubebuilder's `make run`): its objects'
        # changes are recorded when the user names a cluster or what to watch.
        from tracer.kube.client import connect
        from tracer.kube.targets import KubeTargets

        conn = connect(kube.kubeconfig, kube.context)
        watcher = KubeTargets(conn, kube.namespace or conn.namespace, []).watcher(
            kube.watch, prepared.plan.functions)
    trace_here(prepared, trace, out, watcher)


def _attach_pods(target: str | None, trace: TraceOptions, kube: KubeOptions) -> None:
    from tracer.front.attach_pods import trace_local_pods, trace_via_agents
    from tracer.kube.targets import find_pods

    pods = find_pods(target, kube.selector, kube.namespace, kube.container, kube.context,
                     kube.kubeconfig)
    for pod in pods.pods:
        if pod.chosen_because:
            echo(f"tracing pod {pod.pod}: {pod.chosen_because}", err=True)
    first = pods.pods[0]
    if kube.agent:
        out = check_output(trace.output or default_output(first.pod, kube.agent), "--output",
                           trace.force)
        image = kube.agent_image or os.environ.get("TRACER_AGENT_IMAGE") or AGENT_IMAGE
        trace_via_agents(pods, kube.agent, image, kube.agent_timeout, out, trace, kube.watch)
        return
    local = pods.local()
    if len(local) > 1:
        # Checked here, before any agent starts: each pod's binary can be traced.
        functions: set[str] = set()
        for container in local:
            functions.update(prepare_process(container.pid, trace).plan.functions)
        selected = kube.selector or target or "pods"
        out = check_output(trace.output or default_output(selected.replace("/", "-"), "pods"),
                           "--output", trace.force)
        trace_local_pods(pods, out, trace, sorted(functions), kube.watch)
        return
    prepared = prepare_process(local[0].pid, trace, tags=local[0].tags())
    out = check_output(trace.output or default_output(first.pod, local[0].pid), "--output",
                       trace.force)
    trace_here(prepared, trace, out, pods.watcher(kube.watch, prepared.plan.functions))
