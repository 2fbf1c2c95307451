"""The tracer on a real kube-controller-manager 1.20.2 (with DWARF, and stripped), no probe
named: while Deployments, ReplicaSets, Jobs and Services are created, every one of their keys
is in a span of its own controller's sync function, each sync once, with the error it
returned. PersistentVolumeClaims, made and deleted, are synced by PVC protection's
processPVC(namespace, name), the one sync function without a key string.

Ground truth is kube-controller-manager's own log at -v=4 (tests/kcm/kcm.py): one "Finished
syncing" line per sync, and the failures its workers log. A namespace whose ResourceQuota
allows no pods makes the API server refuse its Pods, so the ReplicaSet and Job syncs there
return errors (the Job's through syncJob's (bool, error): the go-second-error decoder)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from helpers import read_lines, run_tracer, wait_for_header, wait_until
from kubernetes import client

from tracer.binary.analyze import analyze
from tracer.probes import library

from .kcm import (
    KIND_FUNCTIONS,
    SYNC,
    binary,
    create_namespace,
    create_objects,
    delete_objects,
    failures,
    finished_syncs,
)

PROBE = "kube-controller-manager"
RUNS = [("dwarf", "gdb"), ("stripped", "gdb"),
        pytest.param("stripped", "uprobe",
                     marks=pytest.mark.skipif(os.geteuid() != 0,
                                              reason="kernel uprobes need root"))]


def owned_replicasets(api: client.ApiClient, namespaces: list[str]) -> dict[str, str]:
    """The ReplicaSets the Deployments made: key -> "ReplicaSet"."""
    apps = client.AppsV1Api(api)
    found = {}
    for ns in namespaces:
        for rs in apps.list_namespaced_replica_set(ns).items:
            if any(ref.kind == "Deployment" for ref in rs.metadata.owner_references or []):
                found[f"{ns}/{rs.metadata.name}"] = "ReplicaSet"
    return found


@pytest.mark.parametrize(("variant", "backend"), RUNS)
def test_every_key_in_a_span_of_its_own_controller(variant, backend, kcm, kcm_cluster,
                                                   tracer_cmd, tmp_path):
    t0 = time.monotonic()
    manager = kcm(variant)
    t1 = time.monotonic()
    trace = tmp_path / "trace.jsonl"
    args = ["attach", str(manager.pid), "--output", str(trace), "--quiet",
            "--max-stopped", "off"]
    if backend != "gdb":
        args += ["--backend", backend]
    run = tracer_cmd(*args)  # no --probe
    header = wait_for_header(trace, run, timeout=60)
    assert header["probe"] == PROBE, header["notes"]
    assert header["backend"] == backend
    assert header["binary"]["dwarf"] == (variant == "dwarf")
    assert set(SYNC.values()) <= set(header["functions"])
    t2 = time.monotonic()
    print(f"{variant}/{backend}: kube-controller-manager ready in {t1 - t0:.1f} s, traced "
          f"{t2 - t1:.1f} s later, attach_pause_ms={header['attach_pause_ms']}, "
          f"{len(header['functions'])} functions, {header['breakpoints']} breakpoints")

    api = kcm_cluster.api_client
    suffix = os.urandom(3).hex()
    fine = create_namespace(api, f"kcm-{suffix}")
    refused = create_namespace(api, f"kcm-nopods-{suffix}", forbid_pods=True)
    # Names of this run's own: a refused Job's error names its pod, not its namespace.
    made = (create_objects(api, fine, f"a{suffix}", 2)
            | create_objects(api, refused, f"b{suffix}", 1))

    # Until kube-controller-manager says it has synced every object, the Deployments'
    # ReplicaSets included, in each of its controllers.
    def synced() -> dict[str, str] | None:
        objects = made | owned_replicasets(api, [fine, refused])
        done = finished_syncs(manager.text())
        if len(objects) < len(made) + 3 or any(
                (fn, key) not in done for key, kind in objects.items()
                for fn in KIND_FUNCTIONS[kind]):
            return None
        return objects

    objects = wait_until(synced, 30, "kube-controller-manager's syncs", interval=0.2)
    print(f"synced {time.monotonic() - t2:.1f} s after the header")
    time.sleep(1.0)  # the first retries of the refused syncs
    before = manager.text()  # every sync it names had been entered while traced
    t3 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.stderr()
    print(f"the tracer took {time.monotonic() - t3:.1f} s to end")
    time.sleep(0.5)
    after = manager.text()  # every sync entered before the tracer left has returned

    records = read_lines(trace)
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "SIGINT"
    assert records[-1].get("lost", 0) == 0, records[-1]
    spans = [r for r in records if r["type"] == "span"]
    for span in spans:
        if span["function"] == SYNC["pvc-protection"]:
            # processPVC(namespace, name): a request, no key string; keyed here as the
            # worker's key was.
            assert span.get("key") is None and span["request"], span
            span["key"] = f"{span['request']['namespace']}/{span['request']['name']}"
    # Only the traced controllers' sync functions ran: no span of any other function.
    assert {s["function"] for s in spans} <= set(SYNC.values())
    ours = [s for s in spans if (s.get("key") or "").partition("/")[0] in (fine, refused)]
    for span in ours:
        # Keyed by the item, in its own controller's function.
        kind = objects.get(span["key"])
        assert kind is not None, f"{span['function']} synced {span['key']}: no object of ours"
        assert span["function"] in KIND_FUNCTIONS[kind], (span["key"], span["function"])
        namespace, _, name = span["key"].partition("/")
        assert span["request"] == {"namespace": namespace, "name": name}
        # Status and error agree (a sync still running when the tracer left has neither).
        assert span["panic"] is None
        if span["end_ns"] is None:
            assert (span["status"], span["error"]) == ("unfinished", None), span
        else:
            assert span["status"] == ("error" if span["error"] else "ok"), span

    # Every object, in each of its controllers, once per sync its log names.
    counted = Counter((s["function"], s["key"]) for s in ours)
    low, high = finished_syncs(before), finished_syncs(after)
    for key, kind in objects.items():
        for fn in KIND_FUNCTIONS[kind]:
            assert counted[fn, key] >= 1, f"{key} ({kind}) in no span of {fn}"
            assert low.get((fn, key), 0) <= counted[fn, key] <= high.get((fn, key), 0), \
                (fn, key, counted[fn, key], low.get((fn, key)), high.get((fn, key)))

    # The errors returned: each failure its workers logged is a span's error, and each error
    # span's is a logged failure, with its message exactly as logged (a StatusError keeps it
    # in ErrStatus.Message, read by name in the type descriptor, vendor/ path or not).
    rs_errors = [s for s in ours if s["function"] == SYNC["replicaset"] and s["error"]]
    job_errors = [s for s in ours if s["function"] == SYNC["job"] and s["error"]]
    (rs_before, job_before), (rs_after, job_after) = failures(before), failures(after)
    rs_before = [(k, m) for k, m in rs_before if k.startswith(f"{refused}/")]
    assert rs_before, "no ReplicaSet sync was refused its pods"
    assert len(rs_before) <= len(rs_errors) <= len(rs_after)
    for span in rs_errors + job_errors:
        assert span["key"].startswith(f"{refused}/"), span
        assert span["error"]["type"] == "*errors.StatusError", span["error"]
    logged = Counter(rs_after)
    for span in rs_errors:
        message = span["error"]["message"]
        assert logged[span["key"], message], span["error"]
    job_keys = {k for k, kind in made.items() if kind == "Job" and k.startswith(refused)}
    assert {s["key"] for s in job_errors} == job_keys
    job_before = [m for m in job_before if f'pods "b{suffix}-job-' in m]
    job_after = [m for m in job_after if f'pods "b{suffix}-job-' in m]
    assert job_before, "no Job sync was refused its pods"
    assert len(job_before) <= len(job_errors) <= len(job_after)
    for span in job_errors:
        message = span["error"]["message"]
        assert message in job_after, span["error"]
    # Where pods are created, the syncs succeed.
    fine_rs = [s for s in ours if s["key"].startswith(f"{fine}/")
               and s["function"] in (SYNC["replicaset"], SYNC["job"])]
    assert fine_rs and not any(s["error"] for s in fine_rs)
    delete_objects(api, refused)  # its retries would go on in the next tests' runs


def test_probes_check_chooses_it_on_the_stripped_build():
    """`tracer probes check` names the probe and lists the functions it finds by name in
    the stripped build: the same as in the build with DWARF, every sync function of 1.20."""
    dwarf = analyze(str(binary("dwarf")))
    expected = library.match(library.resolve(PROBE), dwarf).reconciles
    assert len(expected) == 28 and set(SYNC.values()) <= set(expected)
    result = run_tracer("probes", "check", str(binary("stripped")), timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "stripped, no DWARF" in lines[0]
    starred = [line for line in lines if line.startswith("* ")]
    assert len(starred) == 1 and starred[0].startswith(f"* {PROBE} "), starred
    assert "28 reconcile function(s)" in starred[0]
    block = lines[lines.index(starred[0]) + 1:]
    block = block[: next((i for i, line in enumerate(block) if not line.startswith("    ")),
                         len(block))]
    assert sorted(line.split()[-1] for line in block) == sorted(expected)
    # What each function's decoders give.
    out = result.stdout
    for function, fields in ((SYNC["deployment"], "entry: key (go-key); return: error (go-error)"),
                             (SYNC["job"], "entry: key (go-key); return: error (go-second-error)"),
                             (SYNC["pvc-protection"], "entry: namespace, name (go-namespace-name); "
                                                      "return: error (go-error)")):
        assert f"    {function}\n      {fields}\n" in out, (function, fields)
