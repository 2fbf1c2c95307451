"""Output files never follow a planted link, never truncate a file the tracer did not write
(without --force), and are always new 0600 files; probe files with hostile regexes end in
one line, quickly."""

from __future__ import annotations

import os
import stat
import time

import pytest
from helpers import run_tracer, sample
from hostile_support import hostile_trace

from tracer.errors import UserError
from tracer.output import check_output
from tracer.session.tracefile import TraceWriter

SECRET = b"root:secret:do-not-touch\n"


def _victim(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    victim.chmod(0o644)
    return victim


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_trace_writer_replaces_a_link_and_never_writes_through_it(tmp_path):
    victim = _victim(tmp_path)
    link = tmp_path / "trace.jsonl"
    link.symlink_to(victim)
    writer = TraceWriter(str(link))
    writer.write({"type": "header"})
    writer.close()
    assert victim.read_bytes() == SECRET and _mode(victim) == 0o644
    assert not link.is_symlink() and _mode(link) == 0o600
    assert link.read_text() == '{"type":"header"}\n'


def test_trace_writer_makes_a_new_0600_file_over_an_old_0644_one(tmp_path):
    old = tmp_path / "trace.jsonl"
    old.write_text('{"type":"header"}\n')
    old.chmod(0o644)
    hard = tmp_path / "hardlink"
    os.link(old, hard)  # a second name of the old file keeps its bytes
    writer = TraceWriter(str(old))
    writer.write({"type": "header", "n": 2})
    writer.close()
    assert _mode(old) == 0o600 and hard.read_text() == '{"type":"header"}\n'
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_check_output_refuses_links_and_foreign_files(tmp_path):
    victim = _victim(tmp_path)
    link = tmp_path / "link.jsonl"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        check_output(str(link), "--output")
    with pytest.raises(UserError, match="not a file the tracer wrote"):
        check_output(str(victim), "--output")
    assert check_output(str(link), "--output", force=True) == str(link)
    ours = tmp_path / "old-trace.jsonl"
    ours.write_text('{"type":"header","schema":1}\n{"type":"span"}\n')
    assert check_output(str(ours), "--output") == str(ours)  # an old trace is replaced
    assert check_output(str(tmp_path / "new.jsonl"), "--output")


@pytest.mark.parametrize("command", [
    ("export", "{t}", "-f", "chrome", "-o", "{o}"),
    ("export", "{t}", "-f", "csv", "-o", "{o}"),
    ("export", "{t}", "-f", "timestamps", "-o", "{o}"),
    ("report", "{t}", "--causes-out", "{o}"),
    ("plot", "{t}", "-o", "{o}.png"),
])
def test_planted_links_are_left_alone(command, tmp_path):
    trace = hostile_trace(tmp_path / "t.jsonl")
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    target = out.with_suffix(".png") if command[0] == "plot" else out
    target.symlink_to(victim)
    args = [a.format(t=trace, o=out) for a in command]
    result = run_tracer(*args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "symbolic link" in result.stderr
    assert victim.read_bytes() == SECRET and target.is_symlink()

    # A file that is not one of ours is refused too...
    target.unlink()
    target.write_bytes(SECRET)
    result = run_tracer(*args)
    assert result.returncode == 2 and "not a file the tracer wrote" in result.stderr
    assert target.read_bytes() == SECRET

    # ... and --force replaces the link itself, never what it points to.
    target.unlink()
    target.symlink_to(victim)
    result = run_tracer(*args, "--force")
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == SECRET
    assert not target.is_symlink() and _mode(target) == 0o600

    # Written again: our own output is replaced without --force.
    result = run_tracer(*args)
    assert result.returncode == 0, result.stderr


def test_tracer_run_refuses_a_planted_output_link(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "trace.jsonl"
    out.symlink_to(victim)
    op = str(sample("go1.27/sample-operator"))
    result = run_tracer("run", "-o", str(out), "-q", "--", op, "-calls", "5")
    assert result.returncode == 2 and "symbolic link" in result.stderr, result.stderr
    assert victim.read_bytes() == SECRET
    result = run_tracer("run", "-o", str(out), "-q", "--force", "--", op, "-calls", "5")
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == SECRET and _mode(out) == 0o600 and not out.is_symlink()


def _probe(tmp_path, match: str) -> str:
    path = tmp_path / "hostile.toml"
    path.write_text(f"name = \"hostile\"\nlanguage = \"go\"\n[[function]]\nmatch = '''{match}'''\n"
                    "role = \"reconcile\"\n")
    return str(path)


@pytest.mark.parametrize("match,words", [
    (r"^(.|.)*$x", "took more than"),  # catastrophic backtracking: hung for 30 s and more
    ("(" * 5000 + ")" * 5000, "characters long"),  # was an internal RecursionError
    ("(" * 400 + ")" * 400, "nests groups"),
    ("a" * 5_000_000, "characters long"),
    ("(unclosed", "not a valid regular expression"),
])
def test_hostile_probe_regexes_are_one_short_line(match, words, tmp_path):
    probe = _probe(tmp_path, match)
    started = time.monotonic()
    result = run_tracer("probes", "check", str(sample("go1.27/sample-operator")), "-p", probe)
    took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr and words in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and len(result.stderr) < 400
    assert took < 30
