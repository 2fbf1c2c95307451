"""The real controller-runtime operators (samples/cr-operator, built by scripts/build-samples into
build/samples/cr/) against a real kube-apiserver: install the CRD, start an operator by PID, drive
a workload through the API, read its ground truth. No tracer here.

  CR_BUILDS                    build name -> CrBuild (binary, controller-runtime version, Priority)
  cr_binary(name) -> Path      build/samples/cr/NAME (fails the test if it is missing)
  install_crd(api_client)      the Memcached CRD, waited until Established
  operator_argv(binary, kubeconfig, truth, ...) -> list[str]   the command line alone
  start_operator(binary, kubeconfig, truth, ...) -> RealOperator  .pid .truth .records() .stop()
  drive_workload(api_client, namespace, operator=None, plan=None) -> Workload  create/change/delete
  churn(api_client, namespace, seconds, per_second=20, plan=None) -> Workload    a steady rate
  default_plan(prefix, copies=1) -> list[Planned]     the objects, and what their reconciles return
  expected_outcome(planned, namespace, has_priority) -> {requeue, requeue_after_ns, priority, error}
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from helpers import check_error
from kube import objects as kube_objects
from kube.objects import create_namespace, read_jsonl  # noqa: F401 - part of this module's API
from kubernetes import client

ROOT = Path(__file__).resolve().parent.parent.parent
CR_DIR = ROOT / "build" / "samples" / "cr"
CRD_MANIFEST = ROOT / "samples" / "cr-operator" / "config" / "crd" / "bases" / \
    "cache.example.com_memcacheds.yaml"

GROUP, VERSION, PLURAL = "cache.example.com", "v1alpha1", "memcacheds"
WATCH_LABEL = "cache.example.com/watch"

MEMCACHED = "memcached"  # the ground truth's "controller"
LABELED_CONFIGMAP = "labeled-configmap"
LABELED_SECRET = "labeled-secret"  # an ObjectReconciler (reconcile.AsReconciler)

# The reconcile functions (what the ground truth's "function" holds: the symbol-table names, the
# same in all four builds), and the sub-reconcilers named Reconcile that are not reconciles.
PKG = "example.com/cr-operator/internal/controller"
RECONCILE_FUNCTIONS = {
    MEMCACHED: f"{PKG}.(*MemcachedReconciler).Reconcile",
    LABELED_CONFIGMAP: f"{PKG}.NewLabeledConfigMapReconciler.func1",  # a reconcile.Func closure
    LABELED_SECRET: f"{PKG}.(*SecretReconciler).Reconcile",  # Reconcile(ctx, *corev1.Secret)
}
SUB_RECONCILERS = (
    f"{PKG}.(*configMapSubReconciler).Reconcile",
    f"{PKG}.(*statusSubReconciler).Reconcile",
)

ERROR_KINDS = ("conflict", "notfound", "plain", "wrapped", "agent")


@dataclass(frozen=True)
class CrBuild:
    name: str
    controller_runtime: str
    client_go: str
    has_priority: bool  # reconcile.Result has Priority (v0.23+)
    stripped: bool

    @property
    def binary(self) -> Path:
        return cr_binary(self.name)


CR_BUILDS = {
    b.name: b for b in (
        CrBuild("cr-operator", "v0.25.3", "v0.37.0", True, False),
        CrBuild("cr-operator-stripped", "v0.25.3", "v0.37.0", True, True),
        CrBuild("cr-operator-v018", "v0.18.7", "v0.30.1", False, False),
        CrBuild("cr-operator-v018-stripped", "v0.18.7", "v0.30.1", False, True),
    )
}


def cr_binary(name: str) -> Path:
    path = CR_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/build-samples (or scripts/setup)")
    return path


def install_crd(api_client: client.ApiClient, timeout: float = 30) -> None:
    """The Memcached CRD, created and Established."""
    kube_objects.install_crd(api_client, yaml.safe_load(CRD_MANIFEST.read_text()), timeout)


# --- the operator ------------------------------------------------------------------------------


def operator_argv(binary: Path | str, kubeconfig: Path | str, truth: Path | str, *,
                  namespace: str | None = None, leader_namespace: str = "default",
                  leader_id: str | None = None, workers: int = 4, leader_elect: bool = True,
                  args: Sequence[str] = ()) -> list[str]:
    argv = [str(binary), "--kubeconfig", str(kubeconfig), "--ground-truth", str(truth),
            f"--leader-elect={str(leader_elect).lower()}",
            "--leader-election-namespace", leader_namespace,
            "--max-concurrent-reconciles", str(workers)]
    if leader_id:
        argv += ["--leader-election-id", leader_id]
    if namespace:
        argv += ["--namespace", namespace]
    return argv + list(args)


class RealOperator:
    """A cr-operator process this test started; ended by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], truth: Path, env: dict | None = None) -> None:
        self.argv = argv
        self.truth = Path(truth)
        self.stderr_path = self.truth.with_suffix(".stderr")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=open(self.stderr_path, "w"),
                                     env=None if env is None else {**os.environ, **env})
        self.ready_at_ns: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60) -> None:
        """Until it prints "ready": it leads and the informers its controllers use are synced
        (an object created from now on is reconciled)."""
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            readable, _, _ = select.select([fd], [], [], 0.2)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
                if b"ready\n" in buf:
                    self.ready_at_ns = time.monotonic_ns()
                    return
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"{self.argv[0]} not ready after {timeout} s (exit code "
                             f"{self.proc.poll()}):\n{self.stderr()[-3000:]}")

    def lines(self) -> list[dict]:
        return read_jsonl(self.truth)

    def header(self) -> dict | None:
        return next((r for r in self.lines() if r.get("header")), None)

    def records(self) -> list[dict]:
        """The reconcile records (one per call of a reconcile function), in write order."""
        return [r for r in self.lines() if "entry_ns" in r]

    def end(self) -> dict | None:
        """{"end": true, "signal": "terminated", "calls": N} once it has stopped."""
        return next((r for r in self.lines() if r.get("end")), None)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def start_operator(binary: Path | str, kubeconfig: Path | str, truth: Path | str, *,
                   namespace: str | None = None, leader_namespace: str = "default",
                   leader_id: str | None = None, workers: int = 4, leader_elect: bool = True,
                   args: Sequence[str] = (), env: dict | None = None, wait_ready: bool = True,
                   ready_timeout: float = 60) -> RealOperator:
    """Start BINARY (a build/samples/cr/ build) against the API server of KUBECONFIG, writing
    its ground truth to TRUTH; `namespace`: watch only it. Waits for "ready" unless told not to.
    The caller ends it (op.stop()); the cr_operator fixture does it at teardown."""
    op = RealOperator(operator_argv(binary, kubeconfig, truth, namespace=namespace,
                                    leader_namespace=leader_namespace, leader_id=leader_id,
                                    workers=workers, leader_elect=leader_elect, args=args),
                      Path(truth), env)
    if wait_ready:
        try:
            op.wait_ready(ready_timeout)
        except BaseException:
            op.stop()
            raise
    return op


# --- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One object of the workload and what its reconciles return while it has this spec."""

    kind: str  # "Memcached" (memcached), "ConfigMap" (labeled-configmap), "Secret" (labeled-secret)
    name: str
    requeue: bool = False
    requeue_after_ms: int = 0
    priority: int | None = None
    fail_with: str = ""  # one of ERROR_KINDS, or ""

    @property
    def controller(self) -> str:
        return {"Memcached": MEMCACHED, "Secret": LABELED_SECRET}.get(self.kind,
                                                                     LABELED_CONFIGMAP)


def default_plan(prefix: str = "mc", copies: int = 1) -> list[Planned]:
    """Every result field and every error kind, through both controllers: 9 Memcacheds and 5
    labeled ConfigMaps per copy (names PREFIX-KIND, or PREFIX-I-KIND with copies > 1)."""
    m, c = "Memcached", "ConfigMap"
    plan = []
    for i in range(copies):
        pre = prefix if copies == 1 else f"{prefix}-{i}"
        plan += [
            Planned(m, f"{pre}-ok"),
            Planned(m, f"{pre}-requeue", requeue=True),
            Planned(m, f"{pre}-after", requeue_after_ms=300),
            Planned(m, f"{pre}-priority", requeue_after_ms=400, priority=7),
            *(Planned(m, f"{pre}-{kind}", fail_with=kind) for kind in ERROR_KINDS),
            Planned(c, f"{pre}-cm-ok"),
            Planned(c, f"{pre}-cm-after", requeue_after_ms=250, priority=3),
            Planned(c, f"{pre}-cm-conflict", fail_with="conflict"),
            Planned(c, f"{pre}-cm-wrapped", fail_with="wrapped"),
            Planned(c, f"{pre}-cm-agent", fail_with="agent"),
        ]
    return plan


def expected_error(p: Planned, namespace: str) -> dict | None:
    """The error a reconcile of P returns, as the ground truth has it ({"type", "message"})."""
    what = {"Memcached": "memcached", "Secret": "secret"}.get(p.kind, "configmap")
    return {
        "": None,
        "conflict": {"type": "*errors.StatusError",
                     "message": f'Operation cannot be fulfilled on configmaps "{p.name}-lock": the '
                                "object has been modified; please apply your changes to the "
                                "latest version and try again"},
        "notfound": {"type": "*errors.StatusError",
                     "message": f'configmaps "{p.name}-missing" not found'},
        "plain": {"type": "*errors.errorString",
                  "message": f"{what} {namespace}/{p.name}: size must be at most 5"},
        "wrapped": {"type": "*fmt.wrapError",
                    "message": f"reconcile {what} {namespace}/{p.name}: backend unavailable"},
        "agent": {"type": "*controller.agentError",
                  "message": f"backup-agent: status 508: pbm config for {p.name} is not synced"},
    }[p.fail_with]


def expected_outcome(p: Planned, namespace: str, has_priority: bool) -> dict:
    """The record fields of a reconcile of P while it exists with its planned spec. (An API
    error comes with a zero Result; the others with the Result the spec asks for.)"""
    api_error = p.fail_with in ("conflict", "notfound")
    return {
        "requeue": p.requeue and not api_error,
        "requeue_after_ns": 0 if api_error else p.requeue_after_ms * 1_000_000,
        "priority": p.priority if has_priority and not api_error else None,
        "error": expected_error(p, namespace),
    }


OK_OUTCOME = {"requeue": False, "requeue_after_ns": 0, "priority": None, "error": None}


def outcome_of(record: dict) -> dict:
    return {k: record[k] for k in ("requeue", "requeue_after_ns", "priority", "error")}


@dataclass
class Action:
    t_ns: int  # time.monotonic_ns() just before the request: CLOCK_MONOTONIC, as entry_ns
    verb: str  # create, update, delete
    kind: str
    namespace: str
    name: str


@dataclass
class Workload:
    namespace: str
    plan: list[Planned]
    actions: list[Action] = field(default_factory=list)
    created_ns: int = 0  # the phases' start times (CLOCK_MONOTONIC)
    changed_ns: int = 0
    deleted_ns: int = 0
    done_ns: int = 0

    def names(self, kind: str | None = None) -> list[str]:
        return [p.name for p in self.plan if kind is None or p.kind == kind]

    def planned(self, name: str) -> Planned:
        return next(p for p in self.plan if p.name == name)


def _memcached_body(p: Planned) -> dict:
    spec: dict = {"size": 1}
    if p.requeue:
        spec["requeue"] = True
    if p.requeue_after_ms:
        spec["requeueAfterMillis"] = p.requeue_after_ms
    if p.priority is not None:
        spec["priority"] = p.priority
    if p.fail_with:
        spec["failWith"] = p.fail_with
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Memcached",
            "metadata": {"name": p.name}, "spec": spec}


def _configmap_body(p: Planned) -> dict:
    data = {}
    if p.requeue:
        data["requeue"] = "true"
    if p.requeue_after_ms:
        data["requeueAfterMillis"] = str(p.requeue_after_ms)
    if p.priority is not None:
        data["priority"] = str(p.priority)
    if p.fail_with:
        data["failWith"] = p.fail_with
    return {"metadata": {"name": p.name, "labels": {WATCH_LABEL: "true"}}, "data": data}


def _secret_body(p: Planned) -> dict:
    """The labeled-secret controller reads what to return from the annotations."""
    body = _configmap_body(p)
    return {"metadata": {**body["metadata"], "annotations": body["data"]},
            "string_data": {"k": "v"}}


def secret_plan(prefix: str = "sec") -> list[Planned]:
    """Objects of the labeled-secret controller (an ObjectReconciler): a result field and
    two error kinds."""
    s = "Secret"
    return [Planned(s, f"{prefix}-ok"), Planned(s, f"{prefix}-after", requeue_after_ms=350),
            Planned(s, f"{prefix}-wrapped", fail_with="wrapped"),
            Planned(s, f"{prefix}-conflict", fail_with="conflict")]


def _wait(pred: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what()}")


def _missing(operator: RealOperator, names: Iterable[str], since_ns: int,
             want: Callable[[str], dict]) -> list[str]:
    """The names with no record entered after since_ns whose outcome is want(name)."""
    seen = set()
    for r in operator.records():
        if r["entry_ns"] > since_ns and r["name"] not in seen and outcome_of(r) == want(r["name"]):
            seen.add(r["name"])
    return [n for n in names if n not in seen]


def drive_workload(api_client: client.ApiClient, namespace: str,
                   operator: RealOperator | None = None, plan: list[Planned] | None = None,
                   has_priority: bool = True, phase_timeout: float = 20,
                   pause: float = 2.0) -> Workload:
    """Create the objects of PLAN (default_plan()) in NAMESPACE, change them (spec/data reset:
    every reconcile returns a zero Result, no error), then delete them.

    With OPERATOR, each phase waits (up to phase_timeout) until its ground truth shows every
    object reconciled as planned (created: the planned outcome; changed and deleted: a zero
    Result with no error, entered after the phase began); without, each phase lasts PAUSE s.
    has_priority: whether the build's Result has Priority (what the wait expects)."""
    plan = default_plan() if plan is None else plan
    co = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    w = Workload(namespace, plan)

    def act(verb: str, p: Planned) -> None:
        w.actions.append(Action(time.monotonic_ns(), verb, p.kind, namespace, p.name))
        if p.kind == "Memcached":
            if verb == "create":
                co.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   _memcached_body(p))
            elif verb == "update":
                co.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, p.name, {
                    "spec": {"size": 2, "requeue": None, "requeueAfterMillis": None,
                             "priority": None, "failWith": None}})
            else:
                co.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, p.name)
        elif p.kind == "Secret":
            if verb == "create":
                core.create_namespaced_secret(namespace, _secret_body(p))
            elif verb == "update":
                core.replace_namespaced_secret(p.name, namespace, {
                    "metadata": {"name": p.name, "labels": {WATCH_LABEL: "true"}},
                    "string_data": {"changed": "1"}})
            else:
                core.delete_namespaced_secret(p.name, namespace)
        else:
            if verb == "create":
                core.create_namespaced_config_map(namespace, _configmap_body(p))
            elif verb == "update":
                core.replace_namespaced_config_map(p.name, namespace, {
                    "metadata": {"name": p.name, "labels": {WATCH_LABEL: "true"}},
                    "data": {"changed": "1"}})
            else:
                core.delete_namespaced_config_map(p.name, namespace)

    def phase(verb: str, want: Callable[[str], dict]) -> int:
        t0 = time.monotonic_ns()
        for p in plan:
            act(verb, p)
        if operator is None:
            time.sleep(pause)
        else:
            # An ObjectReconciler is never called for an object that is gone.
            names = [p.name for p in plan if not (verb == "delete" and p.kind == "Secret")]
            _wait(lambda: not _missing(operator, names, t0, want), phase_timeout,
                  lambda: f"{verb}: no record as planned for "
                          f"{_missing(operator, names, t0, want)}")
        return t0

    w.created_ns = phase("create", lambda n: expected_outcome(w.planned(n), namespace,
                                                              has_priority))
    w.changed_ns = phase("update", lambda n: OK_OUTCOME)
    w.deleted_ns = phase("delete", lambda n: OK_OUTCOME)
    w.done_ns = time.monotonic_ns()
    return w


def churn_plan(prefix: str = "churn") -> list[Planned]:
    """Objects whose reconciles keep their outcome while churn() changes them."""
    m, c = "Memcached", "ConfigMap"
    return [Planned(m, f"{prefix}-ok"),
            *(Planned(m, f"{prefix}-{kind}", fail_with=kind) for kind in ERROR_KINDS),
            Planned(c, f"{prefix}-cm-ok"), Planned(c, f"{prefix}-cm-agent", fail_with="agent")]


def churn(api_client: client.ApiClient, namespace: str, seconds: float,
          per_second: float = 20, plan: list[Planned] | None = None,
          delete: bool = True) -> Workload:
    """Create PLAN (churn_plan()), then for SECONDS change one object after the other at
    PER_SECOND changes/s (a Memcached's spec.size, a ConfigMap's data["n"]: the planned outcome
    stays), then delete them (unless delete=False). Each Memcached change makes about three
    reconciles (the change, its status patch, its owned ConfigMap's patch); each ConfigMap
    change one. Errors add rate-limited retries. Returns every action with its time."""
    plan = churn_plan() if plan is None else plan
    co = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    w = Workload(namespace, plan)
    w.created_ns = time.monotonic_ns()
    for p in plan:
        w.actions.append(Action(time.monotonic_ns(), "create", p.kind, namespace, p.name))
        if p.kind == "Memcached":
            co.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                               _memcached_body(p))
        else:
            core.create_namespaced_config_map(namespace, _configmap_body(p))
    w.changed_ns = time.monotonic_ns()
    interval = 1 / per_second
    i = 0
    next_t = time.monotonic()
    end = next_t + seconds
    while time.monotonic() < end:
        p = plan[i % len(plan)]
        i += 1
        w.actions.append(Action(time.monotonic_ns(), "update", p.kind, namespace, p.name))
        if p.kind == "Memcached":
            co.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, p.name,
                                              {"spec": {"size": 1 + i % 5}})
        else:
            core.patch_namespaced_config_map(p.name, namespace, {"data": {"n": str(i)}})
        next_t += interval
        time.sleep(max(0.0, next_t - time.monotonic()))
    w.deleted_ns = time.monotonic_ns()
    if delete:
        for p in plan:
            w.actions.append(Action(time.monotonic_ns(), "delete", p.kind, namespace, p.name))
            if p.kind == "Memcached":
                co.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, p.name)
            else:
                core.delete_namespaced_config_map(p.name, namespace)
    w.done_ns = time.monotonic_ns()
    return w


# --- the trace against the ground truth -------------------------------------------------------


def match(truth: list[dict], spans: list[dict], opened: int, closed: int) -> dict[int, dict]:
    """Each true reconcile to the one span on its goroutine that contains it; every span
    inside the window holds one."""
    matched: dict[int, dict] = {}
    for i, call in enumerate(truth):
        found = [s for s in spans if s["goroutine"] == call["goroutine"]
                 and s["start_ns"] <= call["entry_ns"] and s["end_ns"] is not None
                 and s["end_ns"] >= call["exit_ns"]]
        assert len(found) == 1, f"{call} is in {len(found)} spans"
        matched[i] = found[0]
    assert len({s["id"] for s in matched.values()}) == len(truth), "a span holds two calls"
    inside = [s for s in spans if s["start_ns"] >= opened and s["end_ns"] is not None
              and s["end_ns"] <= closed]
    assert {s["id"] for s in inside} <= {s["id"] for s in matched.values()}, \
        "a span inside the window that is no reconcile of the operator's"
    return matched


def check_span(call: dict, span: dict, has_priority: bool) -> None:
    assert span["request"] == {"namespace": call["namespace"], "name": call["name"]}
    result = {"requeue": call["requeue"], "requeue_after_ns": call["requeue_after_ns"]}
    if has_priority:
        result["priority"] = call["priority"]
    assert span["result"] == result
    check_error(call["error"], span["error"])
    assert span["status"] == ("error" if call["error"] else "ok")
    if call["error"] and call["error"]["type"] == "*errors.StatusError":
        assert span["error"]["reason"] in ("Conflict", "NotFound")
        assert span["error"]["code"] in (409, 404)
