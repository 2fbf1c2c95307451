"""Rust async reconciles: the Rust sample's `async fn reconcile`, polled by its own
multi-threaded executor, traced through gdb with the kube-rs probe, one span per future.

The ground truth comes from the executor: the boxed future's address, when its first poll
started and when the poll that completed it returned (and it was dropped), the thread and
times of every poll. Debug builds carry DWARF (the future's state and the poll's Ok/Err are
read by it); release builds, as cargo makes them, carry symbols only (the state offset comes
from the poll's own dispatch, the result is not readable)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    SAMPLES,
    read_lines,
    run_tracer,
    sample,
    tracer_pid,
    wait_for_header,
    wait_until,
)

from tracer.binary.analyze import analyze
from tracer.probes.compile import compile_plan
from tracer.targets.process import altered_code, load_bias

# -instrumented: every reconcile future boxed inside a generic wrapper (as kube-rs wraps it in
# tracing's Instrumented), which an optimized build inlines the reconcile's poll and drop into.
BUILDS = ["rust/rust-operator-debug", "rust/rust-operator-release",
          "rust/rust-operator-instrumented"]
WORK_US = 150  # busy work in every poll: each poll's time on CPU is at least this
KNOBS = ["-workers", "4", "-calls", "300", "-rate", "300", "-work-us", str(WORK_US),
         "-error-every", "7"]


def holds(call: dict, span: dict) -> bool:
    """The span is this reconcile's: same future, inside the executor's timing of it."""
    return (span["future"] == call["future"] and span["end_ns"] is not None
            and call["start_ns"] <= span["start_ns"] and span["end_ns"] <= call["end_ns"])


def match_futures(truth: list[dict], spans: list[dict]) -> dict[int, dict]:
    """Each true reconcile to the one span of its future inside its time; fails on none or
    two, and on a span holding two reconciles (futures' addresses are reused)."""
    by_future: dict[str, list[dict]] = {}
    for span in spans:
        by_future.setdefault(span["future"], []).append(span)
    matched: dict[int, dict] = {}
    used: set[int] = set()
    for call in truth:
        found = [s for s in by_future.get(call["future"], []) if holds(call, s)]
        assert len(found) == 1, f"reconcile {call} has {len(found)} spans"
        assert found[0]["id"] not in used, f"span {found[0]} holds two reconciles"
        used.add(found[0]["id"])
        matched[call["seq"]] = found[0]
    return matched


def trace_sample(build: str, operator, tracer_cmd, tmp_path,
                 probe: str = "kube-rs") -> tuple[object, list[dict]]:
    op = operator(build, *KNOBS, "-linger")
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--probe", probe, "-o", str(trace), "-q",
                     "--max-stopped", "off")
    header = wait_for_header(trace, run)
    assert header["probe"] in ("kube-rs", "wrapped-reconcile")
    assert header["functions"] == ["rust_operator::reconcile"]
    op.start_work()
    wait_until(op.done, 120, "the Rust operator to finish its reconciles")
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    return op, read_lines(trace)


# Debian bookworm's rustc (1.63) makes async bodies generators behind GenFuture, whose
# release builds inline the body into GenFuture's poll; the samples may be built by a newer
# rustup toolchain, so the other one gets its own builds here when it is installed.
DEBIAN_RUSTC = Path("/usr/bin/rustc")
VARIANTS = {"debug": ["-C", "opt-level=0", "-g"],
            "release": ["-C", "opt-level=3", "-C", "strip=debuginfo"],
            "instrumented": ["--cfg", "instrumented", "-C", "opt-level=3", "-C",
                             "strip=debuginfo"]}


@pytest.fixture(scope="module")
def debian_builds(tmp_path_factory) -> dict[str, str]:
    stamp = SAMPLES / ".stamps" / "rust" / "rust-operator-debug"
    if not DEBIAN_RUSTC.exists():
        pytest.skip("no Debian rustc (/usr/bin/rustc): the samples' own builds are the test")
    version = subprocess.run([DEBIAN_RUSTC, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if stamp.exists() and stamp.read_text().startswith(version):
        pytest.skip(f"the samples are built with {version} already")
    out = tmp_path_factory.mktemp("debian-rustc")
    builds = {}
    for variant, flags in VARIANTS.items():
        binary = out / f"rust-operator-{variant}"
        subprocess.run([DEBIAN_RUSTC, "--edition", "2021", "--crate-name", "rust_operator",
                        *flags, "-o", binary, ROOT / "samples/rust-operator/main.rs"],
                       check=True, capture_output=True)
        builds[variant] = str(binary)
    return builds


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_debian_rustc_builds(variant, debian_builds, operator, tracer_cmd, tmp_path):
    test_every_reconcile_once(debian_builds[variant], operator, tracer_cmd, tmp_path)


WRAPPED_PROBE = """
name = "wrapped-reconcile"
language = "native"

[[function]]
kind = "rust-async"
role = "reconcile"
match = 'reconcile::\\{\\{closure\\}\\}$'
poll = '^<rust_operator::Instrumented<F> as core::future::future::Future>::poll$'
drop = '^core::ptr::drop_in_place<rust_operator::Instrumented<'
"""


def test_wrapper_named_in_a_probe_file(operator, tracer_cmd, tmp_path):
    """A person who knows the wrapper names its poll and drop (docs/probes.md): the same
    spans as found through the vtable, named after the body."""
    probe = tmp_path / "wrapped.toml"
    probe.write_text(WRAPPED_PROBE)
    test_every_reconcile_once("rust/rust-operator-instrumented", operator, tracer_cmd,
                              tmp_path, str(probe))


@pytest.mark.parametrize("build", BUILDS)
def test_every_reconcile_once(build, operator, tracer_cmd, tmp_path, probe="kube-rs"):
    op, records = trace_sample(build, operator, tracer_cmd, tmp_path, probe)
    header, end = records[0], records[-1]
    spans = [r for r in records if r["type"] == "span"]
    truth = op.calls()
    assert len(truth) == 300
    assert len(spans) == len(truth), "every reconcile exactly once, nothing more"
    matched = match_futures(truth, spans)
    moved = [c for c in truth if len(set(c["threads"])) > 1]
    assert moved, "no future moved between threads: the test proves nothing about it"
    assert {c["polls"] for c in truth} == {1, 2, 3, 4}
    # What the build lets the tracer read (said in the header's notes): with DWARF, the
    # result; with rustc 1.68+ DWARF (which describes the future's `self`), the object too.
    reads_result = any("Ok/Err read from DWARF" in n for n in header["notes"])
    reads_request = any("namespace/name read" in n for n in header["notes"])
    assert reads_result == header["binary"]["dwarf"]
    if build == "rust/rust-operator-debug":
        assert reads_request
    wrapped = build.endswith("instrumented")
    for call in truth:
        span = matched[call["seq"]]
        assert span["function"] == "rust_operator::reconcile"
        assert span["polls"] == call["polls"]
        # The thread of every poll, in order: right also when the future moved.
        assert span["threads"] == call["threads"]
        assert span["thread"] == call["threads"][0]
        assert abs(span["cpu_ns"] + span["await_ns"] - span["duration_ns"]) <= 5_000
        # Each poll's breakpoints fire inside the executor's timing of that poll, and
        # every poll spins WORK_US: the time on CPU lies between the two.
        assert call["polls"] * WORK_US * 1000 <= span["cpu_ns"] <= call["cpu_ns"]
        assert span["await_ns"] >= 0
        # Read from the future's arguments at its first poll (obj: &Request).
        assert span["request"] == ({"namespace": call["namespace"], "name": call["name"]}
                                   if reads_request else None)
        if reads_result:
            if call["error"] is None:
                # The sample's Action is kube-runtime's shape: its requeue is read too.
                assert span["status"] == "ok"
                assert span["result"] == {"ok": True, **call["result"]}
                assert span["error"] is None
            else:
                assert span["status"] == "error"
                # The sample's errors: "conflict: ..." and "unavailable: ..."
                variant = call["error"].split(":")[0].capitalize()
                assert span["error"]["type"] == f"rust_operator::Error::{variant}"
                # No message: the error's Display ("conflict: ns-1/obj-4 was modified")
                # formats its fields, and a field is not what it prints.
                assert span["error"]["message"] is None
        else:
            # Ok/Err is not read: "completed" where the state says so; the wrapper's state is
            # not read (its drop drops no body to confirm it), so Ready and cancelled are not
            # told apart: no status.
            assert span["status"] == (None if wrapped else "completed")
            assert span["result"] is None
    assert end["pairing"]["orphan_exits"] == 0
    # The wrapper's state is unknown: its drop ends each span (at the end of its last poll);
    # elsewhere the poll that leaves the future Returned does.
    assert end["pairing"]["ended_by_marker"] == (len(truth) if wrapped else 0)
    assert end["code_restored"] is True
    assert_untouched(op)


def assert_untouched(op) -> None:
    """Detached: no tracer, and every breakpoint byte, read back through /proc/PID/mem,
    equal to the file's (independently of the tracer's own check)."""
    assert op.proc.poll() is None, "the operator died"
    wait_until(lambda: tracer_pid(op.pid) == 0, 15, "TracerPid to be 0")
    info = analyze(str(op.binary))
    plan = compile_plan(info, probe="kube-rs")
    bias = load_bias(op.pid, str(op.binary), info.pie)
    assert plan.breakpoint_addresses(0), "nothing was traced"
    assert altered_code(op.pid, str(op.binary), plan.breakpoint_addresses(0), bias) == []
    assert op.stray_signals() == [], "the tracer delivered a signal to the operator"


@pytest.mark.parametrize("build", BUILDS)
def test_probe_check_names_the_future(build):
    """What the compiled plan holds: the poll's entry and RETs and the drop, keyed by the
    future; the state offset found in the debug and release builds (DWARF, or the poll's own
    dispatch); for the wrapped future, the wrapper's poll and drop, found through its vtable."""
    info = analyze(str(sample(build)))
    plan = compile_plan(info, probe="kube-rs")
    assert plan.functions == ["rust_operator::reconcile"]
    roles = {p.role for p in plan.points}
    assert roles == {"poll", "poll-exit", "drop"}
    assert {p.key for p in plan.points} == {"future"}
    poll = info.function_at(next(p.addr for p in plan.points if p.role == "poll"))
    drop = info.function_at(next(p.addr for p in plan.points if p.role == "drop"))
    if build.endswith("instrumented"):
        assert "Instrumented" in poll.name and "Instrumented" in drop.name
        assert any("ended by its drop" in note for note in plan.notes), plan.notes
    else:
        assert "reconcile" in poll.name and "Instrumented" not in drop.name
        assert any("state at +0x" in note for note in plan.notes), plan.notes
    assert bool(plan.rust_results) == info.has_dwarf


@pytest.mark.parametrize("backend", ["dlv"])
def test_other_backends_refuse_async(backend, tmp_path):
    proc = subprocess.Popen([str(sample(BUILDS[0])), "-wait-signal"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        result = run_tracer("attach", str(proc.pid), "--probe", "kube-rs", "--backend",
                            backend, "-o", str(tmp_path / "t.jsonl"), "-q")
        assert result.returncode == 2
        assert result.stderr.startswith("tracer: error: ")
        assert "--backend gdb" in result.stderr
        assert not (tmp_path / "t.jsonl").exists()
        assert tracer_pid(proc.pid) == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_detach_mid_run(operator, tracer_cmd, tmp_path):
    """Leaving while futures are suspended between polls: the operator goes on untraced with
    its code as the file's, the futures still pending are written as unfinished, and every
    span written is a ground-truth reconcile."""
    op = operator(BUILDS[1], "-workers", "4", "-calls", "0", "-rate", "200", "-work-us", "50",
                  "-sleep-us", "2000")
    trace = tmp_path / "trace.jsonl"
    run = tracer_cmd("attach", str(op.pid), "--probe", "kube-rs", "-o", str(trace), "-q",
                     "--max-stopped", "off", "--duration", "2")
    wait_for_header(trace, run)
    op.start_work()
    assert run.wait(60) == 0, run.stderr()
    records = read_lines(trace)
    end = records[-1]
    assert end["reason"] == "duration" and end["code_restored"] is True
    spans = [r for r in records if r["type"] == "span"]
    finished = [s for s in spans if s["status"] != "unfinished"]
    assert finished and end["unfinished"] == len(spans) - len(finished)
    assert_untouched(op)
    before = len(op.calls())
    wait_until(lambda: len(op.calls()) > before + 50, 30, "the operator to go on reconciling")
    traced = [c for c in op.calls() if any(holds(c, s) for s in finished)]
    assert len(match_futures(traced, finished)) == len(finished), \
        "a span that is no reconcile of the ground truth"


SMALL_RESULT = """
use std::future::Future;
use std::task::{Context, Poll, Waker};
async fn tick() {}
pub async fn reconcile(n: u32) -> Result<u32, ()> {
    tick().await;
    if n > 3 { Err(()) } else { Ok(n) }
}
fn main() {
    // Boxed as dyn Future, as an executor keeps it: its poll is a function (in the vtable).
    let mut fut: std::pin::Pin<Box<dyn Future<Output = Result<u32, ()>>>> =
        std::hint::black_box(Box::pin(reconcile(std::env::args().count() as u32)));
    let mut cx = Context::from_waker(Waker::noop());
    while fut.as_mut().poll(&mut cx).is_pending() {}
}
"""


@pytest.mark.parametrize("flags", [["-C", "opt-level=0", "-g"], ["-C", "opt-level=1"]],
                         ids=["debug", "release"])
def test_future_in_rdi_when_the_poll_returns_in_registers(flags, tmp_path):
    """A reconcile whose Poll<Result<..>> fits in two registers: `self` is then the first
    argument (RDI), not RSI; DWARF says so, and without it the poll's code does not show a
    return through memory, so the plan says RSI is assumed."""
    rustc = Path.home() / ".cargo" / "bin" / "rustc"
    if not rustc.exists():
        pytest.skip("no rustup rustc")
    src = tmp_path / "small.rs"
    src.write_text(SMALL_RESULT)
    binary = tmp_path / "small"
    subprocess.run([rustc, "--edition", "2021", "--crate-name", "small", *flags,
                    "-C", "symbol-mangling-version=v0", "-o", binary, src],
                   check=True, capture_output=True)
    info = analyze(str(binary))
    plan = compile_plan(info, probe="kube-rs")
    polls = {p.decode for p in plan.points if p.role == "poll"}
    if "-g" in flags:
        assert polls == {"rust-poll-rdi:" + next(iter(polls)).split(":", 1)[1]}
    else:
        assert all(d.startswith("rust-poll:") for d in polls)
        assert any("not seen to go through memory" in n for n in plan.notes), plan.notes
