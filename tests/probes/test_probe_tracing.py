"""Each shipped Go probe on a sample with its real symbol shapes, traced by real gdb, against
the sample's own ground truth; and the wasm-operator probe on a Rust binary."""

from __future__ import annotations

import os

import pytest
from helpers import (
    assert_every_call_once,
    assert_native_calls_once,
    match_spans,
    read_lines,
    run_tracer,
    sample,
)
from probe_support import PROBES, assert_steps, reconciles, trace_sample

PSMDB = ("github.com/percona/percona-server-mongodb-operator/pkg/controller/"
         "perconaservermongodb.(*ReconcilePerconaServerMongoDB).")
PG = ("github.com/percona/percona-postgresql-operator/percona/controller/pgcluster."
      "(*PGClusterReconciler).")


@pytest.mark.parametrize(("build", "probe", "reconcile", "steps"), [
    ("go1.27/psmdb-operator", "percona-server-mongodb", PSMDB + "Reconcile", 6),
    ("go1.27/psmdb-operator-stripped", "percona-server-mongodb", PSMDB + "Reconcile", 6),
    ("go1.19/psmdb-operator", "percona-server-mongodb", PSMDB + "Reconcile", 6),
    ("go1.27/pg-operator", "percona-postgresql", PG + "Reconcile", 4),
])
def test_percona_reconciles_with_their_steps(build, probe, reconcile, steps, operator,
                                             tracer_cmd, tmp_path):
    """No probe named: the operator's own is chosen over controller-runtime, and said."""
    header, spans, truth, stderr = trace_sample(operator, tracer_cmd, tmp_path, build)
    assert header["probe"] == probe
    assert f"probe {probe} chosen" in stderr and "also matching: controller-runtime" in stderr
    assert header["functions"][0] == reconcile and len(header["functions"]) == 1 + steps
    assert len(header["steps"]) == steps and header["probe_file"].endswith(f"/{probe}.toml")
    assert any(c["error"] for c in truth) and any(c["requeue_after_ns"] for c in truth)
    top = reconciles(spans)
    assert_every_call_once(truth, top)
    assert_steps(truth, spans, match_spans(truth, top))
    if "psmdb" in build:  # reconcileStatefulSet runs inside reconcileReplsets
        assert any(s.get("depth") == 2 and "caller" in s for s in spans)


def test_arangodb_interval_is_the_result(operator, tracer_cmd, tmp_path):
    header, spans, truth, _ = trace_sample(operator, tracer_cmd, tmp_path,
                                           "go1.27/arangodb-operator")
    assert header["probe"] == "arangodb"
    assert len(spans) == len(truth) >= 200
    matched = match_spans(truth, spans)
    for call in truth:
        span = matched[call["seq"]]
        assert span["result"] == {"requeue": False, "requeue_after_ns": call["requeue_after_ns"]}
        assert span["last_interval_ns"] == call["last_interval_ns"]
        assert span["status"] == "ok"
    # The interval really varies (1 ms after an error, 2 to 5 ms otherwise).
    assert len({c["requeue_after_ns"] for c in truth}) >= 3


def test_client_go_workqueue_key_and_error(operator, tracer_cmd, tmp_path):
    header, spans, truth, _ = trace_sample(operator, tracer_cmd, tmp_path,
                                           "go1.27/workqueue-controller")
    assert header["probe"] == "client-go-workqueue"
    assert header["functions"] == ["main.(*Controller).syncHandler"]
    assert len(spans) == len(truth)
    matched = match_spans(truth, spans)
    assert any(c["error"] for c in truth)
    for call in truth:
        span = matched[call["seq"]]
        assert span["key"] == call["key"]
        assert span["request"] == {"namespace": call["namespace"], "name": call["name"]}
        assert span["error"] == call["error"]
        assert span["status"] == ("error" if call["error"] else "ok")


def test_probe_by_name_and_by_file(operator, tracer_cmd, tmp_path):
    """--probe controller-runtime on the Percona sample: its Reconcile only, no steps; the
    Percona probe by its file's path: the steps again."""
    header, spans, truth, stderr = trace_sample(operator, tracer_cmd, tmp_path,
                                                "go1.27/psmdb-operator", "--probe",
                                                "controller-runtime")
    assert header["probe"] == "controller-runtime" and "chosen" not in stderr
    assert header["functions"] == [PSMDB + "Reconcile"]
    assert_every_call_once(truth, spans)

    header, spans, truth, _ = trace_sample(
        operator, tracer_cmd, tmp_path, "go1.27/psmdb-operator", "--probe",
        str(PROBES / "percona-server-mongodb.toml"))
    assert header["probe"] == "percona-server-mongodb"
    top = reconciles(spans)
    assert_every_call_once(truth, top)
    assert_steps(truth, spans, match_spans(truth, top))


# Written from docs/probes.md alone: a probe for the sample operator, with its stack-burning
# helper as a step (only some calls run it).
MY_PROBE = r'''
name = "my-sample"
description = "The sample operator, with its recursion as a step"
language = "go"

[[function]]
match = '^example\.com/sample-operator/controllers\.\(\*SampleReconciler\)\.Reconcile$'
role = "reconcile"
entry = "cr-request"
exit = "cr-result"

[[function]]
match = '^example\.com/sample-operator/controllers\.\(\*SampleReconciler\)\.recurse$'
role = "step"
'''


def test_a_probe_written_from_the_documentation(operator, tracer_cmd, tmp_path):
    probe = tmp_path / "my-sample.toml"
    probe.write_text(MY_PROBE)
    header, spans, truth, _ = trace_sample(
        operator, tracer_cmd, tmp_path, "go1.27/sample-operator", "--probe", str(probe),
        knobs=("-calls", "300", "-recurse-every", "7", "-error-every", "9",
               "-requeue-every", "13"))
    assert header["probe"] == "my-sample"
    top = reconciles(spans)
    assert_every_call_once(truth, top)
    matched = match_spans(truth, top)
    steps = {s["parent"]: s for s in spans if "parent" in s}
    recursing = [c for c in truth if c["recurse_depth"]]
    assert recursing and len(steps) == len(recursing)
    for call in recursing:
        parent = matched[call["seq"]]
        step = steps[parent["id"]]
        assert step["function"].endswith(".recurse") and step["depth"] == 1
        assert parent["start_ns"] <= step["start_ns"] <= step["end_ns"] <= parent["end_ns"]


def test_wasm_operator_host(tmp_path):
    """The wasm-operator probe on a Rust binary with the host's symbol names: checked, then
    traced from its first instruction (tracer run), every call once on its thread."""
    host = sample("rust/wasm-operator-host")
    check = run_tracer("probes", "check", str(host))
    assert check.returncode == 0, check.stderr
    lines = check.stdout.splitlines()
    assert lines[0].startswith(f"# {host}: rust") and "symbols" in lines[0]
    chosen = [line for line in lines if line.startswith("* ")]
    assert len(chosen) == 1 and chosen[0].startswith("* wasm-operator ")
    assert chosen[0].endswith(": 2 reconcile function(s)")
    assert any("_ZN10controller18dispatch_reconcile17h" in line for line in lines)
    assert any("_ZN10controller7modules4wasm11WasmRuntime6wakeup17h" in line for line in lines)

    trace, truth_path = tmp_path / "t.jsonl", tmp_path / "truth.jsonl"
    result = run_tracer("run", "-q", "-o", str(trace), "--", str(host), "-threads", "3",
                        "-calls", "90", "-ground-truth", str(truth_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "probe wasm-operator chosen" in result.stderr
    records = read_lines(trace)
    assert records[0]["probe"] == "wasm-operator"
    spans = [r for r in records if r["type"] == "span"]
    truth = read_lines(truth_path)
    assert len(truth) == 180 and any(c["ret"] for c in truth)
    assert_native_calls_once(truth, spans)
    for function in ("dispatch_reconcile", "wakeup"):
        assert sum(function in s["function"] for s in spans) == 90


def test_native_probe_on_a_go_binary_is_refused(tmp_path):
    result = run_tracer("probes", "check", str(sample("go1.27/sample-operator")), "--probe",
                        "wasm-operator")
    assert result.returncode == 1
    assert "for native code" in result.stdout



@pytest.mark.parametrize("backend", [
    "dlv",
    pytest.param("uprobe", marks=pytest.mark.skipif(os.geteuid() != 0,
                                                    reason="kernel uprobes need root")),
])
def test_other_backends_decode_the_same(backend, operator, tracer_cmd, tmp_path):
    """The probe decoders through Delve (from registers) and kernel uprobes (fetch-args):
    workqueue key and error, ArangoDB interval, Percona request/result/error and steps."""
    _, spans, truth, _ = trace_sample(operator, tracer_cmd, tmp_path,
                                      "go1.27/workqueue-controller", "--backend", backend)
    matched = match_spans(truth, spans)
    for call in truth:
        span = matched[call["seq"]]
        assert (span["key"], span["error"]) == (call["key"], call["error"])

    _, spans, truth, _ = trace_sample(operator, tracer_cmd, tmp_path,
                                      "go1.27/arangodb-operator", "--backend", backend)
    matched = match_spans(truth, spans)
    for call in truth:
        span = matched[call["seq"]]
        assert span["result"]["requeue_after_ns"] == call["requeue_after_ns"]
        assert span["last_interval_ns"] == call["last_interval_ns"]

    build = "go1.27/psmdb-operator" + ("-stripped" if backend == "uprobe" else "")
    _, spans, truth, _ = trace_sample(operator, tracer_cmd, tmp_path, build,
                                      "--backend", backend)
    top = reconciles(spans)
    assert_every_call_once(truth, top)
    assert_steps(truth, spans, match_spans(truth, top))
