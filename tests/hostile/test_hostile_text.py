"""Names and messages chosen by an adversary reach the terminal visible but inert: every
control character shown as an escape, rich markup shown as typed, the trace keeping the bytes.
Checked on the real commands' output, and in tmux on the pane and its title."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, run_tracer
from hostile_support import (
    HOSTILE_MESSAGE,
    HOSTILE_NAME,
    SHORT_MARKUP,
    hostile_trace,
    inert,
)

from tracer.front.lines import LineFormatter
from tracer.terminal import visible


def test_visible_escapes_every_control_and_keeps_the_rest():
    shown = visible(HOSTILE_NAME)
    assert all(ord(c) >= 0x20 and not 0x7f <= ord(c) <= 0x9f for c in shown)
    assert "\\x1b]0;PWNED-TITLE\\x07" in shown and "\\n" in shown and "\\r" in shown
    assert "\\x9b" in shown and "\\u202e" in shown
    assert "[bold red]b[/]" in shown  # markup is not a control: shown as typed
    assert visible("ns-1/obj-7 µs é") == "ns-1/obj-7 µs é"
    assert visible("\ud800") == "\\ud800"  # a lone surrogate (valid JSON) cannot crash a print


def test_plain_lines_are_one_line_each():
    span = {"type": "span", "function": "f", "start_ns": 10, "end_ns": 20, "duration_ns": 10,
            "goroutine": 1, "request": {"namespace": "ns", "name": HOSTILE_NAME},
            "error": {"type": "*E", "message": HOSTILE_MESSAGE}}
    line = visible(LineFormatter({"monotonic_ns": 0, "realtime_ns": 0}).format(span))
    assert "\n" not in line and inert(line)


@pytest.mark.parametrize("args", [
    ("view", "{t}", "--summary"),
    ("report", "{t}"),
    ("export", "{t}", "-f", "csv", "-o", "{d}/out.csv"),
    ("export", "{t}", "-f", "chrome", "-o", "{d}/out.json"),
    ("plot", "{t}", "-o", "{d}/out.png"),
])
def test_commands_print_hostile_traces_inert(args, tmp_path):
    trace = hostile_trace(tmp_path / "hostile.jsonl")
    result = run_tracer(*(a.format(t=trace, d=tmp_path) for a in args))
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    assert inert(result.stdout) and inert(result.stderr)
    if args[0] in ("view", "report"):
        assert "\\x1b]0;PWNED-TITLE\\x07" in result.stdout  # visible, not dropped
        assert SHORT_MARKUP in result.stdout  # as typed, not a style
    # The trace file keeps the exact bytes.
    spans = [json.loads(x) for x in trace.read_text().splitlines()[1:-1]]
    assert HOSTILE_NAME in {s["request"]["name"] for s in spans}


def test_error_lines_quote_outside_text_inert(tmp_path):
    missing = tmp_path / f"no{HOSTILE_NAME[:40]}"
    result = run_tracer("report", str(missing))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and inert(result.stderr)


def test_symbols_and_probes_check_show_names_inert(tmp_path):
    probe = tmp_path / "evil.toml"
    probe.write_text('name = "evil\\u001b]0;PWNED-TITLE\\u0007"\nlanguage = "go"\n'
                     'description = "d\\u001b[2J\\nFORGED"\n[[function]]\n'
                     'match = "\\\\(\\\\*SampleReconciler\\\\)\\\\.Reconcile$"\n'
                     'role = "reconcile"\n')
    from helpers import sample

    result = run_tracer("probes", "check", str(sample("go1.27/sample-operator")), "-p",
                        str(probe))
    assert result.returncode == 0, result.stderr
    assert "evil\\x1b]0;PWNED-TITLE\\x07" in result.stdout and inert(result.stdout)


class Tmux:
    """A private tmux server (own socket), ended by its PID."""

    def __init__(self, tmp_path, command: str, width: int = 120, height: int = 40) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        self.run("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                 command)
        # The title the pane starts with: an OSC 0 that got through would change it.
        self.run("set-option", "-g", "set-titles", "on")
        self.server_pid = int(self.run("display-message", "-p", "#{pid}").strip())

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True,
                              text=True, check=True, timeout=10).stdout

    def screen(self, escapes: bool = False) -> str:
        return self.run("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "t")

    def title(self) -> str:
        return self.run("display-message", "-p", "-t", "t", "#{pane_title}")

    def end(self) -> None:
        try:
            os.kill(self.server_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_in_tmux_the_pane_and_its_title_are_untouched(tmp_path):
    """view --summary, report and the live replay on a real terminal: the title stays, the
    screen is not cleared, no link or colour from a name, and `[/]` freezes nothing."""
    trace = hostile_trace(tmp_path / "hostile.jsonl")
    py = shlex.quote(sys.executable)
    t = shlex.quote(str(trace))
    command = (f"cd {shlex.quote(str(ROOT))} && printf 'MARKER-BEFORE\\n' && "
               f"{py} -m tracer view {t} --summary; {py} -m tracer report {t} --top 3; "
               "echo DONE-$?; sleep 600")
    pane = Tmux(tmp_path, command)
    try:
        before = pane.title()
        assert _wait_for(lambda: "DONE-0" in pane.screen(), 60), pane.screen()
        screen = pane.screen()
        raw = pane.screen(escapes=True)
        assert "PWNED" not in pane.title() and pane.title() == before
        assert "\\x1b]0;PWNED-TITLE\\x07" in screen  # shown, as text
        assert "]8;;" not in raw.replace("\\x1b]8;;", "")  # no hyperlink reached the pane
        assert "\x1b[31m" not in raw  # the name's red never became a style
        assert not any(line.startswith("tracer: error: FORGED") for line in screen.splitlines())
    finally:
        pane.end()


def test_live_view_keeps_refreshing_with_markup_in_names(tmp_path):
    """A name `[/]` used to kill rich's refresh thread: the screen froze at its first frame."""
    trace = hostile_trace(tmp_path / "hostile.jsonl", calls=200)
    py = shlex.quote(sys.executable)
    command = (f"cd {shlex.quote(str(ROOT))} && {py} -m tracer view "
               f"{shlex.quote(str(trace))} --speed 0.2; sleep 600")
    pane = Tmux(tmp_path, command, width=100, height=30)
    try:
        assert _wait_for(lambda: "(*SampleReconc" in pane.screen(), 30), pane.screen()
        first = pane.screen()
        assert _wait_for(lambda: pane.screen() != first, 10), "the screen stopped refreshing"
        screen = pane.screen()
        assert "could not be drawn" not in screen
        assert "PWNED" not in pane.title()
        pane.run("send-keys", "-t", "t", "q")
    finally:
        pane.end()
