"""The real kube-rs operator (samples/kube-rs-operator, built by scripts/build-samples into
build/samples/rust/kube-rs-operator-{release,debug,release-legacy}) against a real
kube-apiserver: install its CRD, start it by PID, drive Widgets through the API, read its
ground truth. No tracer here.

  BUILDS                          build name -> what it is (mangling, DWARF)
  binary(name) -> Path            build/samples/rust/kube-rs-operator-NAME (fails if missing)
  install_crd(api_client, binary) the Widget CRD (the operator prints it), waited Established
  start_operator(binary, kubeconfig, truth, namespace=...) -> RustOperator
                                  .pid .records() .end() .stop(); "ready" waited for
  drive(api_client, namespace) -> Workload   create, change and delete Widgets
  create(api_client, namespace, widget), patch_spec(api_client, namespace, name, spec)
  expected(widget, namespace) -> {"status", "error", "error_variant", "requeue_ns"}

The operator's ground truth (one JSON line per reconcile future it polled): namespace, name,
start_ns / end_ns (CLOCK_MONOTONIC at the first poll and at completion or drop), polls and the
thread of each, status ok/error/cancelled (cancelled: dropped before it completed, kube-runtime
aborting its task; end_ns at the drop), the error's Display text and variant, requeue_ns, `at`
(an address inside the reconcile's future). Also `started` lines (each first poll, at once) and
`restart` lines (SIGUSR1: the operator drops its Controller, which aborts every running
reconcile, and starts a new one).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kube import objects as kube_objects
from kube.objects import create_namespace, read_jsonl  # noqa: F401 - part of this module's API
from kubernetes import client

ROOT = Path(__file__).resolve().parent.parent.parent
RUST_DIR = ROOT / "build" / "samples" / "rust"
GROUP, VERSION, PLURAL, KIND = "tracer.example.com", "v1", "widgets", "Widget"
CRATE = "kube_rs_operator"
RECONCILE = f"{CRATE}::reconcile"


@dataclass(frozen=True)
class Build:
    name: str
    mangling: str  # "v0" or "legacy"
    dwarf: bool

    @property
    def binary(self) -> Path:
        return binary(self.name)


BUILDS = {b.name: b for b in (
    Build("release", "v0", False),
    Build("debug", "v0", True),
    Build("release-legacy", "legacy", False),
)}


def binary(name: str) -> Path:
    path = RUST_DIR / f"kube-rs-operator-{name}"
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/build-samples (or scripts/setup)")
    return path


def install_crd(api_client: client.ApiClient, operator: Path, timeout: float = 30) -> None:
    """The operator's own CRD (it prints it), created and Established."""
    body = json.loads(subprocess.run([str(operator), "--print-crd"], capture_output=True,
                                     text=True, check=True, timeout=30).stdout)
    kube_objects.install_crd(api_client, body, timeout)


class RustOperator:
    """A kube-rs-operator process this test started; ended by its PID (SIGTERM, then KILL)."""

    def __init__(self, argv: list[str], truth: Path) -> None:
        self.argv = argv
        self.binary = Path(argv[0])
        self.truth = Path(truth)
        self.stderr_path = self.truth.with_suffix(".stderr")
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60) -> None:
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
                    return
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"{self.argv[0]} not ready after {timeout} s (exit code "
                             f"{self.proc.poll()}):\n{self.stderr()[-3000:]}")

    def records(self) -> list[dict]:
        return [r for r in read_jsonl(self.truth) if "seq" in r]

    def started(self) -> list[dict]:
        """The first polls said at once (`{"started": true, namespace, name, start_ns, at}`)."""
        return [r for r in read_jsonl(self.truth) if r.get("started")]

    def restarts(self) -> list[dict]:
        """SIGUSR1's Controller restarts (`{"restart": N, "ts_ns"}`)."""
        return [r for r in read_jsonl(self.truth) if "restart" in r]

    def end(self) -> dict | None:
        return next((r for r in read_jsonl(self.truth) if r.get("end")), None)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
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


def start_operator(binary_path: Path, kubeconfig: Path, truth: Path, *,
                   namespace: str | None = None, concurrency: int = 4, threads: int = 2,
                   wait_ready: bool = True) -> RustOperator:
    argv = [str(binary_path), "--kubeconfig", str(kubeconfig), "--ground-truth", str(truth),
            "--concurrency", str(concurrency), "--threads", str(threads)]
    if namespace:
        argv += ["--namespace", namespace]
    op = RustOperator(argv, truth)
    if wait_ready:
        try:
            op.wait_ready()
        except BaseException:
            op.stop()
            raise
    return op


# --- the workload ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Widget:
    name: str
    delay_ms: int = 20
    requeue_seconds: int | None = None
    fail: str | None = None
    config_map_name: str | None = None

    def spec(self, message: str) -> dict:
        spec: dict = {"message": message, "delayMs": self.delay_ms}
        if self.requeue_seconds is not None:
            spec["requeueSeconds"] = self.requeue_seconds
        if self.fail is not None:
            spec["fail"] = self.fail
        if self.config_map_name is not None:
            spec["configMapName"] = self.config_map_name
        return spec


def default_widgets(prefix: str = "w", copies: int = 2) -> list[Widget]:
    """Ok with the default and a chosen requeue, a timer of 0 to 60 ms, an error of the
    operator's own (Asked) and an API error (Kube: an invalid ConfigMap name)."""
    out = []
    for i in range(copies):
        out += [
            Widget(f"{prefix}{i}-ok"),
            Widget(f"{prefix}{i}-requeue", requeue_seconds=120),
            Widget(f"{prefix}{i}-quick", delay_ms=0),
            Widget(f"{prefix}{i}-slow", delay_ms=60, requeue_seconds=30),
            Widget(f"{prefix}{i}-fail", fail="quota exceeded"),
            Widget(f"{prefix}{i}-invalid", config_map_name="Invalid_Name"),
        ]
    return out


def expected(widget: Widget, namespace: str) -> dict:
    """What a reconcile of WIDGET returns (the ground truth's fields)."""
    if widget.config_map_name == "Invalid_Name":
        return {"status": "error", "error_variant": "Kube", "requeue_ns": None}
    if widget.fail is not None:
        return {"status": "error", "error_variant": "Asked", "requeue_ns": None,
                "error": f"widget {widget.name} asked to fail: {widget.fail}"}
    return {"status": "ok", "error_variant": None, "error": None,
            "requeue_ns": (widget.requeue_seconds or 300) * 1_000_000_000}


@dataclass
class Workload:
    namespace: str
    widgets: list[Widget]
    actions: list[tuple[int, str, str]] = field(default_factory=list)  # (t_ns, verb, name)


def _custom(api_client) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def create(api_client: client.ApiClient, namespace: str, widget: Widget,
           message: str = "first") -> None:
    _custom(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": widget.name},
         "spec": widget.spec(message)})


def patch_spec(api_client: client.ApiClient, namespace: str, name: str, spec: dict) -> None:
    _custom(api_client).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                       {"spec": spec})


def drive(api_client: client.ApiClient, namespace: str, widgets: list[Widget] | None = None,
          settle: float = 1.5) -> Workload:
    """Create every Widget, change each one's message, delete them; waits `settle` seconds
    after each phase for the reconciles it causes."""
    widgets = widgets if widgets is not None else default_widgets()
    api = _custom(api_client)
    work = Workload(namespace, widgets)
    for phase in ("create", "change", "delete"):
        for w in widgets:
            work.actions.append((time.monotonic_ns(), phase, w.name))
            if phase == "create":
                api.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL,
                    {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                     "metadata": {"name": w.name}, "spec": w.spec("first")})
            elif phase == "change":
                api.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, w.name, {"spec": {"message": "second"}})
            else:
                api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, w.name)
        time.sleep(settle)
    return work
