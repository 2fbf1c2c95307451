"""The options the tracing commands share: as click options, and as the two small
dataclasses a command hands on (TraceOptions, KubeOptions) instead of a score of
parameters."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import click

import tracer
from tracer.backends.select import CHOICES, environment_help, options_help
from tracer.session.budget import BudgetLimits

AGENT_IMAGE = "ghcr.io/tracer-dev/tracer-agent:" + tracer.__version__


@dataclass(frozen=True)
class TraceOptions:
    """What to trace, with which backend, under which budget, shown how and written where."""

    output: str | None = None
    force: bool = False
    duration: float | None = None
    symbol: str | None = None
    probe: str | None = None
    no_args: bool = False
    quiet: bool = False
    plain: bool = False
    backend: str = "auto"
    backend_options: tuple[str, ...] = ()
    budget: BudgetLimits = field(default_factory=BudgetLimits)

    def agent_args(self, pid: int | None = None, duration: float | None = None) -> list[str]:
        """The arguments after `tracer agent` that trace as these options ask: for the agent
        container's args. The duration is usually the local side's to keep."""
        args = [] if pid is None else [str(pid)]
        for flag, value in (("--symbol", self.symbol), ("--probe", self.probe),
                            ("--duration", duration)):
            if value is not None:
                args += [flag, str(value)]
        if self.no_args:
            args.append("--no-args")
        for pair in self.backend_options:
            args += ["--backend-option", pair]
        max_share = self.budget.max_share
        return args + ["--backend", self.backend,
                       "--max-stopped", f"{max_share * 100:g}%" if max_share else "off",
                       "--budget-window", f"{self.budget.window_s:g}"]


@dataclass(frozen=True)
class KubeOptions:
    """Where to find pods, in kubectl's words, and how to reach them."""

    namespace: str | None = None
    container: str | None = None
    selector: str | None = None
    context: str | None = None
    kubeconfig: str | None = None
    watch: tuple[str, ...] = ()
    agent: str | None = None
    agent_image: str | None = None
    agent_timeout: float = 60.0

    def names_a_cluster(self) -> bool:
        """A PID's events are recorded when the user names a cluster or what to watch."""
        watch = self.watch and tuple(self.watch) != ("none",)
        return bool(self.namespace or self.context or self.kubeconfig or watch)


class Percent(click.ParamType):
    name = "PERCENT"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        text = str(value).strip().rstrip("%")
        if text.lower() == "off":
            return 0.0
        try:
            share = float(text) / 100
        except ValueError:
            self.fail(f"{value!r} is not a percentage like 5%", param, ctx)
        if not 0 <= share < 1:
            self.fail(f"{value!r} must be from 0% (off) to below 100%", param, ctx)
        return share


TRACE_OPTIONS = (
    click.option("--output", "-o", metavar="FILE",
                 help="Trace file (JSON Lines). Default: trace-NAME-PID-TIME.jsonl here."),
    click.option("--force", is_flag=True,
                 help="Replace an existing --output that is not a trace (or a link: the link "
                      "itself is replaced, never what it points to)."),
    click.option("--duration", "-d", type=click.FloatRange(min=0, min_open=True),
                 metavar="SECONDS", help="Detach after this many seconds."),
    click.option("--symbol", "-s", metavar="REGEX",
                 help="Trace the functions whose names match REGEX instead of a probe's (an "
                      "ad-hoc probe: every match is a reconcile)."),
    click.option("--probe", "-p", metavar="NAME|FILE",
                 help="The probe to trace with: a known probe's name (tracer probes list; "
                      "$TRACER_PROBE_PATH's folders first) or a probe file. Default: the best "
                      "match for the binary."),
    click.option("--no-args", is_flag=True,
                 help="Record no argument or error values, only times and types."),
    click.option("--quiet", "-q", is_flag=True, help="Print no line per call."),
    click.option("--plain", is_flag=True,
                 help="A line per finished call instead of the live screen on a terminal."),
    click.option("--backend", "-b", type=click.Choice(CHOICES), default="auto",
                 show_default=True,
                 help="The debugger behind the run; auto explains its choice in the trace "
                      "header; " + environment_help() + "."),
    click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
                 help="A setting of the chosen backend (repeatable): " + options_help() + "."),
    click.option("--max-stopped", type=Percent(), default="5%", show_default=True,
                 help="Pause budget: when the operator spends more than this share of a "
                      "window stopped by the tracer, drop optional decoding; when it happens "
                      "again, detach. 0 or off disables it."),
    click.option("--budget-window", type=click.FloatRange(min=0.5), default=10.0,
                 show_default=True, metavar="SECONDS",
                 help="The window the pause budget is measured over."),
)
_TRACE_FIELDS = ("output", "force", "duration", "symbol", "probe", "no_args", "quiet", "plain",
                 "backend", "backend_options")


def trace_options(command):
    """The options every tracing command takes, handed to it as `trace: TraceOptions`."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        budget = BudgetLimits(kwargs.pop("max_stopped"), kwargs.pop("budget_window"))
        values = {name: kwargs.pop(name) for name in _TRACE_FIELDS}
        return command(*args, trace=TraceOptions(**values, budget=budget), **kwargs)

    for option in reversed(TRACE_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


KUBE_OPTIONS = (
    click.option("--namespace", "-n", metavar="NS",
                 help="The pod's namespace. Default: the context's, else default."),
    click.option("--container", "-c", metavar="NAME",
                 help="The container to trace when the pod has several."),
    click.option("--selector", "-l", metavar="SELECTOR",
                 help="Trace every running pod that matches, into one file; each span says "
                      "its pod."),
    click.option("--context", metavar="NAME", help="The kubeconfig context to use."),
    click.option("--kubeconfig", metavar="FILE",
                 help="Kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, or the pod's "
                      "service account when run in a pod."),
    click.option("--watch", "-w", "watch", multiple=True, metavar="RESOURCE",
                 help="Also record ADDED/MODIFIED/DELETED events of these objects (e.g. "
                      "configmaps, samples.example.com; repeatable). Default: the kinds the "
                      "reconcilers are named after, when the API has them. 'none' records "
                      "none."),
    click.option("--agent", type=click.Choice(["ephemeral", "node"]),
                 help="Trace from anywhere: run `tracer agent` next to the operator, as an "
                      "ephemeral container in its pod (SYS_PTRACE only) or in a short-lived "
                      "pod on its node (host PID namespace, removed after), and stream the "
                      "trace back through the API server."),
    click.option("--agent-image", metavar="IMAGE", default=None,
                 help="The agent's image (deploy/agent/Containerfile). Default: "
                      "$TRACER_AGENT_IMAGE, else " + AGENT_IMAGE + "."),
    click.option("--agent-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
                 show_default=True, metavar="SECONDS",
                 help="How long the agent may take to start (its image pulled)."),
)
_KUBE_FIELDS = ("namespace", "container", "selector", "context", "kubeconfig", "watch",
                "agent", "agent_image", "agent_timeout")


def kube_options(command):
    """Where to find a pod, handed to the command as `kube: KubeOptions`."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in _KUBE_FIELDS}
        return command(*args, kube=KubeOptions(**values), **kwargs)

    for option in reversed(KUBE_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
