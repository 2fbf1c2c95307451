"""`tracer agent` streaming to a receiver, end to end between real local processes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    STEADY_KNOBS,
    TRACER,
    Operator,
    alive,
    assert_every_call_once,
    end_process,
    read_lines,
    sample,
    tracer_pid,
    wait_for_header,
    wait_until,
)

import tracer
from tracer.binary.analyze import analyze
from tracer.front.options import TraceOptions
from tracer.probes.compile import compile_plan
from tracer.remote.protocol import versions
from tracer.remote.receiver import PipeStream, Receiver
from tracer.session.budget import BudgetLimits
from tracer.session.tracefile import read_trace
from tracer.targets.process import altered_code

BUILD = "go1.27/sample-operator"
KNOBS = ["-workers", "4", "-calls", "600", "-objects", "20", "-error-every", "9",
         "-requeue-every", "13", "-requeue-after-every", "17", "-panic-every", "101",
         "-linger"]
VIA = {"pod": "op-7d9f", "namespace": "ops", "container": "manager", "node": "n1",
       "container_id": "containerd://" + "ab" * 32}
TAGS = {"k8s": {"pod": "op-7d9f", "namespace": "ops"}}


def code_restored(pid: int, binary: Path) -> bool:
    plan = compile_plan(analyze(str(binary)))
    return altered_code(pid, str(binary), plan.breakpoint_addresses(0), 0) == []


class Agent:
    """`tracer agent` as a subprocess with its stdin and stdout as the stream."""

    def __init__(self, tmp_path: Path, *args: str, env: dict | None = None) -> None:
        self.stderr_path = tmp_path / "agent.stderr"
        self.proc = subprocess.Popen([*TRACER, "agent", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=open(self.stderr_path, "w"),
                                     env=env or os.environ.copy(), cwd=tmp_path)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


class ReceiverThread:
    """The receiver of the test, on a thread so the test can act while it records."""

    def __init__(self, agent: Agent, output: Path, **kwargs) -> None:
        self.receiver = Receiver(PipeStream(agent.proc.stdout, agent.proc.stdin), str(output),
                                 **kwargs)
        self.outcome = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome = self.receiver.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self, timeout: float = 60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the receiver did not finish"
        if self.error is not None:
            raise self.error
        return self.outcome


@pytest.fixture
def agents():
    started: list[Agent] = []
    yield lambda *a, **k: started.append(Agent(*a, **k)) or started[-1]
    for agent in started:
        end_process(agent.proc, signal.SIGTERM, timeout=30)


def test_every_call_once_through_the_stream(operator, agents, tmp_path):
    op = operator(BUILD, *KNOBS)
    copy = tmp_path / "agent-copy.jsonl"
    local = tmp_path / "local.jsonl"
    args = TraceOptions(budget=BudgetLimits(0.0)).agent_args(op.pid)
    agent = agents(tmp_path, *args, "-o", str(copy))
    rx = ReceiverThread(agent, local, via=VIA, tags=TAGS)
    header = wait_for_header(local)
    assert header["via"]["pod"] == "op-7d9f" and header["via"]["node"] == "n1"
    assert header["via"]["agent"]["pid"] == agent.proc.pid
    assert header["k8s"] == TAGS["k8s"]
    assert header["target"]["pid"] == op.pid

    op.start_work()
    done = wait_until(op.done, 120, "the operator to finish its calls")
    rx.receiver.request_stop("test-stop")
    outcome = rx.join()
    assert agent.proc.wait(30) == 0, agent.stderr()

    records = read_lines(local)
    spans = [r for r in records if r["type"] == "span"]
    end = records[-1]
    assert end["type"] == "end" and end["reason"] == "test-stop"
    assert end["code_restored"] is True and end["stream"]["state"] == "complete"
    assert outcome.reason == "test-stop" and outcome.spans == len(spans)
    truth = op.calls()
    assert len(truth) == done["calls"] >= 600
    assert_every_call_once(truth, spans)
    assert all(s["k8s"] == TAGS["k8s"] for s in spans)
    # No lost data: every line the agent wrote is in the local file, in order.
    sent = read_lines(copy)
    assert [r for r in records if r["type"] != "header"] == [
        {**r, **({"k8s": TAGS["k8s"]} if r["type"] == "span" else {}),
         **({"stream": end["stream"]} if r["type"] == "end" else {})}
        for r in sent if r["type"] != "header"]

    assert alive(op.pid)
    assert tracer_pid(op.pid) == 0
    assert code_restored(op.pid, op.binary)
    assert op.stray_signals() == []


def test_agent_killed_mid_run(operator, agents, tmp_path):
    op = operator(BUILD, *STEADY_KNOBS)
    op.start_work()
    local = tmp_path / "local.jsonl"
    agent = agents(tmp_path, str(op.pid), "--max-stopped", "off")
    rx = ReceiverThread(agent, local)
    wait_for_header(local)
    wait_until(lambda: rx.receiver.spans > 50, 60, "spans through the stream")
    os.kill(agent.proc.pid, signal.SIGKILL)
    outcome = rx.join()
    assert outcome.reason == "stream-broken"

    trace = read_trace(str(local))  # whole lines only
    assert not trace.truncated
    assert len(trace.spans) == outcome.spans > 50
    assert trace.end["reason"] == "stream-broken" and trace.end["code_restored"] is None
    assert trace.end["stream"]["state"] == "broken"
    # The agent's gdb reads the end of its input, detaches and leaves the operator running.
    assert alive(op.pid)
    wait_until(lambda: tracer_pid(op.pid) == 0, 20, "gdb to detach after the agent died")
    assert code_restored(op.pid, op.binary)


def test_stream_cut_inside_a_line(operator, tmp_path):
    """A pipe that ends at an arbitrary byte: the file keeps whole lines, says how it ended,
    and the agent, its output broken, detaches cleanly."""
    op = operator(BUILD, *STEADY_KNOBS)
    op.start_work()
    trace = tmp_path / "trace.jsonl"
    cut_at = 60_000
    agent = " ".join(shlex.quote(a) for a in [*TRACER, "agent", str(op.pid)])
    result = subprocess.run(
        [*TRACER, "receive", "-o", str(trace), "--quiet", "--",
         "sh", "-c", f"{agent} | head -c {cut_at}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "ended (stream-broken): " in result.stderr
    assert trace.read_bytes().endswith(b"\n")
    parsed = read_trace(str(trace))
    assert not parsed.truncated and parsed.spans
    stream = parsed.end["stream"]
    assert parsed.end["reason"] == "stream-broken" and stream["state"] == "broken"
    # Every byte that came is accounted for: whole lines recorded, the rest dropped.
    assert stream["bytes"] + stream["cut_bytes"] == cut_at
    assert alive(op.pid)
    wait_until(lambda: tracer_pid(op.pid) == 0, 30, "the agent to detach")
    assert code_restored(op.pid, op.binary)


def test_agent_stops_when_its_stdout_breaks(operator, agents, tmp_path):
    op = operator(BUILD, *STEADY_KNOBS)
    op.start_work()
    copy = tmp_path / "agent-copy.jsonl"
    agent = agents(tmp_path, str(op.pid), "--no-wait", "-o", str(copy))
    wait_for_header(copy)
    agent.proc.stdout.close()  # the reading end is gone: the agent's next line fails
    assert agent.proc.wait(30) == 1, agent.stderr()
    end = read_lines(copy)[-1]
    assert end["type"] == "end" and end["reason"] == "stream-broken"
    assert end["code_restored"] is True
    assert alive(op.pid) and tracer_pid(op.pid) == 0


def test_version_mismatch_is_refused_before_attaching(operator, tmp_path):
    op = operator(BUILD, *KNOBS)
    # A real agent of another version: this tree's package with another version number.
    other = tmp_path / "other"
    shutil.copytree(ROOT / "tracer", other / "tracer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (other / "tracer" / "__init__.py").write_text('__version__ = "0.0.9"\n')
    trace = tmp_path / "trace.jsonl"
    result = subprocess.run(
        [*TRACER, "receive", "-o", str(trace), "--plain", "--", "env",
         f"PYTHONPATH={other}", *TRACER, "agent", str(op.pid)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tracer: error: the agent runs tracer 0.0.9"), result.stderr
    assert f"this tracer is {tracer.__version__}" in last
    assert not trace.exists()
    assert tracer_pid(op.pid) == 0


class NamespacedOperator(Operator):
    """The sample as PID 1 of its own PID namespace, like a container's first process."""

    def __init__(self, binary: Path, truth: Path, args: list[str]) -> None:
        self.outer = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", str(binary),
             "-wait-signal", "-ground-truth", str(truth), *args],
            stdout=subprocess.PIPE, stderr=open(truth.with_suffix(".stderr"), "w"), text=True)
        self.proc = self.outer
        self.binary, self.truth = binary, truth
        self.stderr_path = truth.with_suffix(".stderr")
        line = self.outer.stdout.readline()
        assert line.startswith("ready"), f"operator did not start: {line!r}"
        self.host_pid = wait_until(lambda: _child_of(self.outer.pid), 10, "the forked sample")

    @property
    def pid(self) -> int:
        return self.host_pid


def _child_of(parent: int) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                        return int(entry)
            except (OSError, IndexError, ValueError):
                continue
    return None


@pytest.fixture
def namespaced(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("PID namespaces need root")
    started: list[NamespacedOperator] = []

    def start(*args: str) -> NamespacedOperator:
        op = NamespacedOperator(sample(BUILD), tmp_path / f"truth-{len(started)}.jsonl",
                                list(args))
        started.append(op)
        return op

    yield start
    for op in started:
        end_process(op.outer)


def in_namespace_of(pid: int) -> list[str]:
    """Join the PID and mount namespaces of `pid`, as `kubectl debug --target` does."""
    return ["nsenter", f"--target={pid}", "--pid", "--mount", "--"]


def test_agent_picks_the_operator_in_its_pid_namespace(namespaced, tracer_cmd, tmp_path):
    op = namespaced(*KNOBS)
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("receive", "-o", str(trace), "--plain", "--via", "pod=op-1",
                     "--", *in_namespace_of(op.pid), *TRACER, "agent", "--max-stopped", "off")
    header = wait_for_header(trace, run)
    assert header["target"]["pid"] == 1  # the operator, as its namespace numbers it
    assert header["target"]["name"] == "sample-operator"
    assert header["via"]["pod"] == "op-1"
    op.start_work()
    done = wait_until(op.done, 120, "the operator to finish its calls")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    assert "agent: tracing PID 1 (sample-operator" in run.stderr()
    assert "ended (SIGINT): " in run.stderr()

    records = read_lines(trace)
    end = records[-1]
    assert end["reason"] == "SIGINT" and end["code_restored"] is True
    truth = op.calls()
    assert len(truth) == done["calls"] >= 600
    assert_every_call_once(truth, [r for r in records if r["type"] == "span"])
    assert alive(op.pid) and tracer_pid(op.pid) == 0
    assert code_restored(op.pid, op.binary)
    # The printed lines are the spans, one each.
    assert len(run.stdout().splitlines()) == len(truth)


def test_agent_refuses_to_guess_among_several(namespaced, tmp_path):
    op = namespaced(*KNOBS)
    # A second program in the namespace: the agent cannot tell which is the operator.
    sleeper = subprocess.Popen([*in_namespace_of(op.pid), "sleep", "300"])
    inner = None
    try:
        inner = wait_until(lambda: _child_of(sleeper.pid), 10, "sleep in the namespace")
        trace = tmp_path / "trace.jsonl"
        result = subprocess.run(
            [*TRACER, "receive", "-o", str(trace), "--",
             *in_namespace_of(op.pid), *TRACER, "agent"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        if inner is not None:
            os.kill(inner, signal.SIGTERM)  # nsenter's child, in the namespace
        end_process(sleeper)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tracer: error: agent: several processes could be the operator: "
                           "1 (sample-operator"), last
    assert "(sleep, " in last
    assert not trace.exists()
    assert tracer_pid(op.pid) == 0


def test_stream_is_json_lines_with_a_hello_first(operator, agents, tmp_path):
    """What the lead's Kubernetes side reads: hello first, then the trace, then the end."""
    op = operator(BUILD, *STEADY_KNOBS)
    agent = agents(tmp_path, str(op.pid), "--duration", "2")
    agent.proc.stdin.write(json.dumps({"start": versions()}).encode() + b"\n")
    agent.proc.stdin.flush()
    op.start_work()
    out = agent.proc.stdout.read()
    assert agent.proc.wait(30) == 0, agent.stderr()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0]["type"] == "hello" and lines[0]["tracer_version"] == tracer.__version__
    trace = [r for r in lines if r["type"] not in ("hello", "status", "stats")]
    assert trace[0]["type"] == "header" and trace[-1]["type"] == "end"
    assert trace[-1]["reason"] == "duration" and trace[-1]["code_restored"] is True
    assert any(r["type"] == "status" for r in lines)
    assert any(r["type"] == "span" for r in trace)


def _image_deps() -> set[str]:
    """The distributions deploy/agent/Containerfile installs for the agent."""
    text = (ROOT / "deploy" / "agent" / "Containerfile").read_text()
    match = re.search(r'^ARG AGENT_DEPS="([^"]+)"', text, re.MULTILINE)
    assert match, "no AGENT_DEPS in the Containerfile"
    return {_dist_name(spec) for spec in match.group(1).split()}


def _dist_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_the_image_libraries_suffice_for_the_agent(operator, tmp_path):
    """The agent traces with every dependency the image leaves out made unimportable."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    left_out = {_dist_name(d) for d in project["dependencies"]} - _image_deps()
    assert left_out, "the image installs every dependency: nothing to check"
    modules = sorted(name for name, dists in importlib.metadata.packages_distributions().items()
                     if {_dist_name(d) for d in dists} <= left_out)
    blocked = tmp_path / "blocked.py"
    blocked.write_text(
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    sys.modules[name] = None  # import fails, as in the image\n"
        "from tracer.cli import main\n"
        "main()\n")
    op = operator(BUILD, *STEADY_KNOBS)
    op.start_work()
    trace = tmp_path / "trace.jsonl"
    result = subprocess.run(
        [*TRACER, "receive", "-o", str(trace), "--quiet", "--duration", "2", "--",
         sys.executable, str(blocked), "agent", str(op.pid)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    end = read_lines(trace)[-1]
    assert end["reason"] == "duration" and end["code_restored"] is True
    assert end["spans"] > 0


def test_live_screen_of_a_received_stream(operator, tmp_path):
    """`tracer receive` on a terminal: the same screen as a local attach, fed by the agent."""
    from test_live_view import Tmux, row_numbers

    op = operator(BUILD, "-workers", "4", "-calls", "400", "-rate", "200", "-objects", "6",
                  "-error-every", "7", "-requeue-every", "11", "-linger")
    trace = tmp_path / "trace.jsonl"
    command = " ".join(shlex.quote(a) for a in [
        *TRACER, "receive", "-o", str(trace), "--via", "pod=op-1", "--via", "namespace=ops",
        "--", *TRACER, "agent", str(op.pid)])
    pane = Tmux(tmp_path, 100, 30, f"cd {shlex.quote(str(ROOT))} && {command}; sleep 600")
    try:
        wait_for_header(trace)
        op.start_work()
        done = wait_until(op.done, 60, "the operator to finish")
        time.sleep(2.5)  # the agent's stats come once a second; a few refreshes
        screen = pane.screen()
        pane.keys("q")
        end = wait_until(lambda: (r := read_lines(trace)) and r[-1]["type"] == "end" and r[-1],
                         60, "the trace's end line after q")
    finally:
        pane.end()
    assert end["reason"] == "quit" and end["code_restored"] is True
    spans = [r for r in read_lines(trace) if r["type"] == "span"]
    assert len(spans) == done["calls"]
    header = " ".join(screen.splitlines()[:2])  # it may wrap at 100 columns
    assert f"pod ops/op-1 PID {op.pid} (sample-operator)" in header, header
    assert "gdb via agent" in header
    calls, running, *_ = row_numbers(screen, "(*Sample")[1:]
    assert (int(calls), int(running)) == (len(spans), 0)
    hits = re.search(r"cost: (\d+) hits", screen)
    assert hits and int(hits.group(1)) == end["pairing"]["hits"]
    assert alive(op.pid) and tracer_pid(op.pid) == 0
