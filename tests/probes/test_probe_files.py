"""Probe files: `tracer probes list/check`, and malformed files refused with file:line."""

from __future__ import annotations

import os

import pytest
from helpers import run_tracer, sample
from probe_support import PROBES

SHIPPED = {"controller-runtime", "client-go-workqueue", "percona-server-mongodb",
           "percona-postgresql", "arangodb", "wasm-operator", "kube-rs"}


def probes_env(folder) -> dict:
    return {**os.environ, "TRACER_PROBE_PATH": str(folder)}


def test_list_names_every_shipped_probe_with_its_file():
    result = run_tracer("probes", "list")
    assert result.returncode == 0, result.stderr
    heads = {line.split()[0]: line for line in result.stdout.splitlines()
             if not line.startswith(" ")}
    assert set(heads) >= SHIPPED
    for name in SHIPPED:
        assert str(PROBES / f"{name}.toml") in heads[name] or f"probes/{name}.toml" in heads[name]
    # What it matches is shown under it, with the role.
    text = result.stdout
    assert r"reconcile ^github\.com/arangodb/kube-arangodb/pkg/deployment" in text
    assert "step      ^github\\.com/percona/percona-server-mongodb-operator" in text


@pytest.mark.parametrize(("build", "chosen", "functions"), [
    ("go1.27/sample-operator-stripped", "controller-runtime",
     ["example.com/sample-operator/controllers.(*SampleReconciler).Reconcile"]),
    ("go1.27/psmdb-operator", "percona-server-mongodb",
     ["perconaservermongodb.(*ReconcilePerconaServerMongoDB).Reconcile",
      "perconaservermongodb.(*ReconcilePerconaServerMongoDB).reconcileStatefulSet"]),
    ("go1.27/arangodb-operator", "arangodb", ["deployment.(*Deployment).inspectDeployment"]),
    ("go1.27/workqueue-controller", "client-go-workqueue", ["main.(*Controller).syncHandler"]),
])
def test_check_marks_the_probe_a_trace_would_choose(build, chosen, functions):
    result = run_tracer("probes", "check", str(sample(build)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# ") and "go1.27" in lines[0]
    starred = [line for line in lines if line.startswith("* ")]
    assert len(starred) == 1 and starred[0].startswith(f"* {chosen} ")
    # The chosen probe's functions are listed under it, before the next probe.
    block = lines[lines.index(starred[0]) + 1:]
    block = block[: next((i for i, line in enumerate(block) if not line.startswith("    ")),
                         len(block))]
    for function in functions:
        assert any(line.endswith(function) for line in block), (function, block)


def test_check_says_what_is_missing():
    stripped = run_tracer("probes", "check", str(sample("c/c-operator-stripped")))
    assert stripped.returncode == 1  # no probe matches
    assert "stripped" in stripped.stdout.splitlines()[0]
    assert "missing: symbols" in stripped.stdout
    go_stripped = run_tracer("probes", "check", str(sample("go1.27/sample-operator-stripped")))
    assert "no DWARF, goroutine layout from table" in go_stripped.stdout.splitlines()[0]
    assert "missing:" not in go_stripped.stdout


def test_check_a_running_process(operator):
    op = operator("go1.27/pg-operator", "-linger")
    result = run_tracer("probes", "check", str(op.pid))
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("* percona-postgresql ") for line in result.stdout.splitlines())


def test_a_users_probe_folder_comes_first(tmp_path):
    """$TRACER_PROBE_PATH: a file of the same name replaces the shipped probe."""
    (tmp_path / "arangodb.toml").write_text(
        'name = "arangodb"\ndescription = "mine"\nlanguage = "go"\n'
        '[[function]]\nmatch = "inspectDeployment$"\n')
    result = run_tracer("probes", "list", env=probes_env(tmp_path))
    assert result.returncode == 0, result.stderr
    # Shown relative to the working directory when that is shorter (a clone in /tmp), else
    # absolute.
    mine = tmp_path / "arangodb.toml"
    assert any(f"arangodb  {shown}  " in result.stdout
               for shown in (mine, os.path.relpath(mine))), result.stdout
    assert "    mine" in result.stdout


BAD = [
    ("syntax", 'language = "go"\n[[function]]\nmatch = "Reconcile$\nrole = "step"\n', 3,
     "not valid TOML"),
    ("role", 'language = "go"\n\n[[function]]\nmatch = "Reconcile$"\nrole = "sub-step"\n', 5,
     "role must be one of reconcile, step, end, not 'sub-step'"),
    ("regex", 'language = "go"\n[[function]]\nrole = "reconcile"\nmatch = "(*R).Reconcile"\n',
     4, "match is not a valid regular expression"),
    ("missing-match", 'language = "go"\n[[function]]\nmatch = "x$"\n[[function]]\n'
     'role = "step"\n', 4, "missing key 'match'"),
    ("missing-language", 'name = "x"\n[[function]]\nmatch = "x$"\n', None,
     "missing key 'language'"),
    ("unknown-key", 'language = "go"\n[[function]]\nmatch = "x$"\nrole = "reconcile"\n'
     'decoder = "cr-result"\n', 5, "unknown key 'decoder'"),
    ("decoder", 'language = "native"\n[[function]]\nmatch = "x$"\nexit = "cr-result"\n', 4,
     "exit decoder 'cr-result' is not one for native code"),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_malformed_probe_file_is_one_line_with_file_and_line(tmp_path, name, text, line,
                                                               message):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    where = f"{path}:{line}: " if line else f"{path}: "
    binary = str(sample("go1.27/sample-operator"))
    for args, env in ((["probes", "check", binary, "--probe", str(path)], None),
                      (["probes", "list"], probes_env(tmp_path)),
                      (["run", "--probe", str(path), "--", binary], None)):
        result = run_tracer(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert lines == [lines[0]] and lines[0].startswith(f"tracer: error: {where}"), lines
        assert message in lines[0]


def test_unknown_probe_name_lists_the_known_ones():
    result = run_tracer("probes", "check", str(sample("go1.27/sample-operator")), "--probe",
                        "percona-mysql")
    assert result.returncode == 2
    assert "no probe named 'percona-mysql'" in result.stderr
    assert "percona-server-mongodb" in result.stderr


def test_probe_and_symbol_together_are_refused():
    result = run_tracer("run", "--probe", "controller-runtime", "--symbol", "Reconcile$", "--",
                        str(sample("go1.27/sample-operator")))
    assert result.returncode == 2 and "--probe or --symbol, not both" in result.stderr


def test_check_says_when_the_go_version_has_no_known_goroutine_layout(tmp_path):
    """A stripped Go binary (no DWARF) of a Go version the tracer has no table entry for:
    the sample with its version string patched from go1.27 to go1.29."""
    data = sample("go1.27/sample-operator-stripped").read_bytes()
    assert data.count(b"go1.27.3") >= 1
    future = tmp_path / "future-operator"
    future.write_bytes(data.replace(b"go1.27.3", b"go1.29.3"))
    future.chmod(0o755)
    result = run_tracer("probes", "check", str(future))
    lines = result.stdout.splitlines()
    assert "go1.29.3" in lines[0] and "goroutine layout unknown" in lines[0]
    assert any(line.startswith("* controller-runtime ") for line in lines)
    assert "    missing: goroutine layout: go1.29.3 is not in the tracer's table" in result.stdout
    traced = run_tracer("run", "--", str(future))
    assert traced.returncode == 2 and "goroutine layout" in traced.stderr
