"""The `tracer` command."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys

import click

import tracer
from tracer.backends.select import CHOICES, choose_backend
from tracer.binary.analyze import analyze, find_functions, nearest_names
from tracer.binary.model import BinaryError, BinaryInfo
from tracer.errors import EXIT_USAGE, UserError
from tracer.output import check_output, create_private
from tracer.probes.compile import compile_plan
from tracer.probes.library import choose as choose_probe
from tracer.targets.process import inspect_process
from tracer.terminal import echo

MAX_MESSAGE = 600


def _fail(message: str) -> None:
    """One line on stderr, exit 2. The message may quote outside text (a probe file, a name
    from the operator): it is shown inert (tracer.terminal) and cut if it is huge."""
    if len(message) > MAX_MESSAGE:
        message = f"{message[:MAX_MESSAGE]}... ({len(message):,} characters)"
    echo(f"tracer: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _attach_failure(pid: int | None, exc: BaseException) -> UserError | None:
    """What really happened when a run failed before its trace began: the operator gone
    during the attach (gdb then says `/proc/N/exe: No such file` or the like), or another
    tracer that got there first (ptrace says EPERM, which gdb words as a permission
    problem even to root). None when neither is the case."""
    from tracer.targets.process import process_name, status_field, tracer_pid

    if pid is None:
        return None
    state = status_field(pid, "State")
    if state is None or state.startswith(("Z", "X")):
        return UserError(f"process {pid} exited while the tracer was attaching: nothing was "
                         "traced")
    other = tracer_pid(pid)
    if other and other != os.getpid():
        return UserError(f"process {pid} is already traced by PID {other} "
                         f"({process_name(other)}): a process can have one tracer; stop that "
                         "one first")
    return None


def _analyze(path: str, shown: str | None = None) -> BinaryInfo:
    """`shown` names the binary in messages when `path` is /proc/PID/exe."""
    try:
        info = analyze(path)
    except BinaryError as exc:
        raise UserError(str(exc).replace(path, shown or path)) from None
    except OSError as exc:
        # /proc/PID/exe of a process that exited meanwhile, or a file that went away.
        if path.startswith("/proc/") and not os.path.exists(os.path.dirname(path)):
            pid = path.split("/")[2]
            raise UserError(f"process {pid} exited while the tracer was reading its "
                            "program: nothing was traced") from None
        raise UserError(f"cannot read {shown or path}: {exc.strerror or exc}") from None
    if shown:
        info.path = shown
    return info


def _default_output(name: str, pid: int | str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"trace-{name}-{pid}-{stamp}.jsonl"


def _trace(target, info, plan, output: str, duration: float | None, quiet: bool,
           plain: bool, backend: str, budget: tuple[float, float], watcher=None) -> None:
    from tracer.front.display import Display, session_screen
    from tracer.session.session import Session

    display = Display(quiet, plain)
    factory, note = choose_backend(backend, info)
    if plan.choice:
        display.on_status(plan.choice)  # once the backend is known to be there: one error line
    if getattr(factory, "name", "") == "dlv":
        display.on_status("note: if Delve itself is killed while the operator is busy, the "
                          "operator dies of SIGTRAP (its breakpoints outlive it); --backend "
                          "uprobe cannot harm it that way, and gdb's breakpoints are repaired "
                          "in time")
    if display.live and target.argv:
        # The program's own output would tear the screen apart: keep it beside the trace.
        target.output_log = output + ".out"
        # Made here, new and 0600, never through a link planted at that name; the session
        # then opens the tracer's own file.
        try:
            os.close(create_private(target.output_log))
        except OSError as exc:
            raise UserError(f"cannot write {target.output_log}: {exc.strerror}") from None
        display.messages.append(f"the program's output is in {target.output_log}")
    session = Session(target, info, plan, output, duration, display.on_span,
                      display.on_status, backend_factory=factory, backend_note=note,
                      max_stopped=budget[0], budget_window=budget[1])
    if watcher is not None:
        watcher.start(session.record, display.on_status)
    try:
        outcome = display.run(session, session_screen(session))
    except Exception as exc:
        if session.writer is not None:
            raise
        # Nothing traced yet: if the operator went away or another tracer won the race,
        # that is the one line to say, whatever the debugger made of it.
        better = _attach_failure(target.pid, exc)
        if better is None:
            raise
        raise better from None
    finally:
        if watcher is not None:
            watcher.stop()
    if watcher is not None and watcher.events:
        echo(f"recorded {watcher.events} watch event(s) of "
                   f"{', '.join(watcher.describe())}", err=True)
    display.finish(outcome)


AGENT_IMAGE = "ghcr.io/tracer-dev/tracer-agent:" + tracer.__version__
OUTPUT = click.option("--output", "-o", metavar="FILE",
                      help="Trace file (JSON Lines). Default: trace-NAME-PID-TIME.jsonl here.")
DURATION = click.option("--duration", "-d", type=click.FloatRange(min=0, min_open=True),
                        metavar="SECONDS", help="Detach after this many seconds.")
SYMBOL = click.option("--symbol", "-s", metavar="REGEX",
                      help="Trace the functions whose names match REGEX instead of a probe's "
                           "(an ad-hoc probe: every match is a reconcile).")
PROBE = click.option("--probe", "-p", metavar="NAME|FILE",
                     help="The probe to trace with: a known probe's name (tracer probes list) "
                          "or a probe file. Default: the best match for the binary.")
NO_ARGS = click.option("--no-args", is_flag=True,
                       help="Record no argument or error values, only times and types.")
QUIET = click.option("--quiet", "-q", is_flag=True, help="Print no line per call.")
BACKEND = click.option("--backend", "-b", type=click.Choice(CHOICES), default="auto",
                       show_default=True,
                       help="The debugger behind the run; auto explains its choice in the "
                            "trace header.")
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


MAX_STOPPED = click.option(
    "--max-stopped", type=Percent(), default="5%", show_default=True,
    help="Pause budget: when the operator spends more than this share of a window stopped "
         "by the tracer, drop optional decoding; when it happens again, detach. 0 or off "
         "disables it.")
BUDGET_WINDOW = click.option("--budget-window", type=click.FloatRange(min=0.5), default=10.0,
                             show_default=True, metavar="SECONDS",
                             help="The window the pause budget is measured over.")
FORCE = click.option("--force", is_flag=True,
                     help="Replace an existing --output that is not a trace (or a link: the "
                          "link itself is replaced, never what it points to).")
PLAIN = click.option("--plain", is_flag=True,
                     help="A line per finished call instead of the live screen on a terminal.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracer")
def cli() -> None:
    """Trace the reconcile calls of a Kubernetes operator from outside, with no change to it."""


def trace_options(command):
    """The options every tracing command takes."""
    for option in reversed((OUTPUT, FORCE, DURATION, SYMBOL, PROBE, NO_ARGS, QUIET, PLAIN,
                            BACKEND, MAX_STOPPED, BUDGET_WINDOW)):
        command = option(command)
    return command


def kube_options(command):
    """Where to find a pod, in kubectl's words."""
    options = (
        click.option("--namespace", "-n", metavar="NS",
                     help="The pod's namespace. Default: the context's, else default."),
        click.option("--container", "-c", metavar="NAME",
                     help="The container to trace when the pod has several."),
        click.option("--selector", "-l", metavar="SELECTOR",
                     help="Trace every running pod that matches, into one file; each span "
                          "says its pod."),
        click.option("--context", metavar="NAME", help="The kubeconfig context to use."),
        click.option("--kubeconfig", metavar="FILE",
                     help="Kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, or the "
                          "pod's service account when run in a pod."),
        click.option("--watch", "-w", "watch", multiple=True, metavar="RESOURCE",
                     help="Also record ADDED/MODIFIED/DELETED events of these objects "
                          "(e.g. configmaps, samples.example.com; repeatable). Default: the "
                          "kinds the reconcilers are named after, when the API has them. "
                          "'none' records none."),
        click.option("--agent", type=click.Choice(["ephemeral", "node"]),
                     help="Trace from anywhere: run `tracer agent` next to the operator, as "
                          "an ephemeral container in its pod (SYS_PTRACE only) or in a "
                          "short-lived pod on its node (host PID namespace, removed after), "
                          "and stream the trace back through the API server."),
        click.option("--agent-image", metavar="IMAGE", default=None,
                     help="The agent's image (deploy/agent/Containerfile). Default: "
                          "$TRACER_AGENT_IMAGE, else " + AGENT_IMAGE + "."),
        click.option("--agent-timeout", type=click.FloatRange(min=0, min_open=True),
                     default=60.0, show_default=True, metavar="SECONDS",
                     help="How long the agent may take to start (its image pulled)."),
    )
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@click.argument("target", required=False)
@trace_options
@kube_options
def attach(target: str | None, output: str | None, force: bool, duration: float | None,
           symbol: str | None, probe: str | None,
           no_args: bool, quiet: bool, plain: bool, backend: str,
           max_stopped: float, budget_window: float, namespace: str | None,
           container: str | None, selector: str | None, context: str | None,
           kubeconfig: str | None, watch: tuple[str, ...], agent: str | None,
           agent_image: str | None, agent_timeout: float) -> None:
    """Attach to a running operator and record every reconcile call until Ctrl-C.

    TARGET is a PID, or a pod as kubectl names it: POD, pod/NAME, deploy/NAME (the pod
    holding the leader-election lease, else the first ready one); or use -l SELECTOR."""
    from tracer.session.session import Target

    if target is None and selector is None:
        raise UserError("name what to trace: a PID, a pod (POD, pod/NAME, deploy/NAME) or "
                        "-l SELECTOR")
    pid_watch = False
    if target is not None and target.isdigit() and selector is None:
        if container or agent:
            raise UserError(f"{target} is a PID: -c and --agent are for pods")
        pid, tags, kube = int(target), None, None
        # An operator run outside the cluster (Kubebuilder's `make run`): its objects'
        # changes are recorded when the user names a cluster or what to watch.
        pid_watch = bool(namespace or context or kubeconfig or watch)
    else:
        from tracer.front.attach_pods import trace_local_pods, trace_via_agents
        from tracer.kube.session import find_pods

        kube = find_pods(target, selector, namespace, container, context, kubeconfig)
        for pod in kube.pods:
            if pod.chosen_because:
                echo(f"tracing pod {pod.pod}: {pod.chosen_because}", err=True)
        options = dict(symbol=symbol, probe=probe, no_args=no_args, backend=backend,
                       max_stopped=max_stopped, budget_window=budget_window)
        first = kube.pods[0]
        if agent:
            out = check_output(output or _default_output(first.pod, agent), "--output", force)
            image = agent_image or os.environ.get("TRACER_AGENT_IMAGE") or AGENT_IMAGE
            trace_via_agents(kube, agent, image, agent_timeout, out, duration, quiet, plain,
                             options, watch)
            return
        local = kube.local()
        if len(local) > 1:
            # Checked here, before any agent starts: each pod's binary can be traced.
            functions: set[str] = set()
            for container in local:
                proc = inspect_process(container.pid)
                info = _analyze(proc.exe, shown=proc.exe_target)
                functions.update(compile_plan(info, symbol, capture_args=not no_args,
                                              probe=probe).functions)
            selected = selector or target or "pods"
            out = check_output(output or _default_output(selected.replace("/", "-"), "pods"),
                               "--output", force)
            trace_local_pods(kube, out, duration, quiet, plain, options, sorted(functions),
                             watch)
            return
        pid, tags = local[0].pid, local[0].tags()
    proc = inspect_process(pid)
    info = _analyze(proc.exe, shown=proc.exe_target)
    plan = compile_plan(info, symbol, capture_args=not no_args, probe=probe)
    # /proc/PID/exe reads the very file the process runs, even across mount namespaces.
    info.path = plan.binary = proc.exe
    name = kube.pods[0].pod if kube else proc.name
    out = check_output(output or _default_output(name, pid), "--output", force)
    run_target = Target(pid=pid, name=proc.name, exe=proc.exe_target, tags=tags)
    watcher = kube.watcher(watch, plan.functions) if kube else None
    if pid_watch:
        from tracer.kube.client import connect
        from tracer.kube.session import KubeTargets

        conn = connect(kubeconfig, context)
        watcher = KubeTargets(conn, namespace or conn.namespace, []).watcher(
            watch, plan.functions)
    _trace(run_target, info, plan, out, duration, quiet, plain, backend,
           (max_stopped, budget_window), watcher)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@trace_options
def run(command: tuple[str, ...], output: str | None, force: bool, duration: float | None,
        symbol: str | None, probe: str | None,
        no_args: bool, quiet: bool, plain: bool, backend: str,
        max_stopped: float, budget_window: float) -> None:
    """Start COMMAND under the tracer (use `--` before it) and record from its first call.

    The program ends with the run (Ctrl-C, --duration), like a shell's foreground job."""
    from tracer.session.session import Target

    program = shutil.which(command[0])
    if program is None:
        if os.path.isfile(command[0]):
            raise UserError(f"{command[0]} is not executable: chmod +x it, or name a program")
        raise UserError(f"command not found: {command[0]}")
    info = _analyze(os.path.realpath(program))
    plan = compile_plan(info, symbol, capture_args=not no_args, probe=probe)
    name = os.path.basename(program)
    out = check_output(output or _default_output(name, "run"), "--output", force)
    target = Target(argv=[program, *command[1:]], name=name)
    _trace(target, info, plan, out, duration, quiet, plain, backend,
           (max_stopped, budget_window))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Replay this many times faster than it happened.")
@click.option("--summary", is_flag=True, help="Print the end state once instead of replaying.")
def view(file: str, speed: float, summary: bool) -> None:
    """Show a recorded trace in the live screen: replayed, or its end state (--summary)."""
    from tracer.front.live.replay import view as replay_view

    replay_view(file, speed, summary)


@cli.command()
@click.argument("target")
@click.argument("regex", required=False)
def symbols(target: str, regex: str | None) -> None:
    """List the functions of a process (PID) or binary that could be traced.

    Marks with * the reconcile functions traced by default (the best-matching probe's, named
    in the first line) and with + its steps."""
    if target.isdigit():
        proc = inspect_process(int(target))
        info = _analyze(proc.exe, shown=proc.exe_target)
    elif os.path.exists(target):
        info = _analyze(target)
    else:
        raise UserError(f"{target} is neither a running PID nor a file")
    functions = find_functions(info, regex) if regex else info.functions
    if regex and not functions:
        near = ", ".join(nearest_names(info, regex)) or "none"
        raise UserError(f"no function matches {regex!r} in {info.path}; nearest: {near}")
    facts = [info.language]
    if info.go_version:
        facts.append(info.go_version)
    facts.append("stripped" if not info.has_symtab else "symbols")
    facts.append("DWARF" if info.has_dwarf else "no DWARF")
    best = choose_probe(info)
    if best is not None:
        facts.append(f"probe {best.probe.name}")
    reconciles = set(best.reconciles) if best else set()
    others = set(best.others) if best else set()
    echo(f"# {info.path}: {', '.join(facts)}; {len(functions)} function(s)")
    demangle = None
    if info.language == "rust":
        # As Rust writes them (and as rust-async probes match them), not mangled.
        from tracer.probes.rust_async import demangled as demangle
    for fn in functions:
        name = demangle(fn.name) if demangle else fn.name
        mark = "*" if {fn.name, name} & reconciles else "+" if {fn.name, name} & others else " "
        echo(f"{mark} 0x{fn.entry:x} {fn.end - fn.entry:6d} {name}")


def _register_commands() -> None:
    # Each lives in its own module and imports its heavy libraries only when it runs.
    from tracer.front.agent_cmd import agent, receive
    from tracer.front.export_cmd import export
    from tracer.front.plot_cmd import plot
    from tracer.front.probes_cmd import probes
    from tracer.front.report_cmd import report

    for command in (report, export, plot, probes, agent, receive):
        cli.add_command(command)


_register_commands()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except (UserError, BinaryError) as exc:
        _fail(str(exc))
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as exc:
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see `{ctx.command_path} --help`)"
        _fail(exc.format_message() + hint)
    except BrokenPipeError:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback; TRACER_DEBUG shows it
        if os.environ.get("TRACER_DEBUG"):
            raise
        echo(f"tracer: internal error: {type(exc).__name__}: {exc} "
                   "(set TRACER_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
