"""Cluster start to first span, and what the agent costs the node, on the real one-node
cluster of scripts/cluster (etcd, kube-apiserver and kubelet 1.37.2, containerd, runc, a CNI
bridge) with the real controller-runtime operator (build/samples/cr/cr-operator-stripped) as
a pod, traced the way a user on a laptop traces it: `tracer attach POD --agent ephemeral|node`
from a PID namespace of its own (unshare), with only a kubeconfig.

Each repeat starts a fresh cluster in a new directory and times, as a user waits for them:

- `scripts/cluster up` (to a Ready node);
- importing the agent image (scripts/build-agent-image's OCI archive, `ctr images import`,
  unpacked) into the node's containerd;
- `scripts/cluster run-operator` (the operator's image written and imported, the pod Running
  and still running 2 s later), and, polled beside it, the pod's phase reaching Running;
- for `--agent ephemeral` and `--agent node` (their order alternates between repeats), from
  the `tracer attach` command to the trace header in the local file, and to the first span,
  while one Memcached is patched every 100 ms (about three reconciles each: the change, the
  status patch, the owned ConfigMap's); and the total from `up` to the first span (the sum
  of up, import, run-operator and attach to first span).

Then, for a window of --window s (20) with the same workload, untraced (before and after the
agents) and traced through each agent: the agent container's processes (found by PID: every
process whose /proc/PID/cgroup names the agent's container id, which is how the kubelet's
cgroupfs driver and containerd place them), their summed RSS (the highest of samples every
0.25 s) and CPU (the container's cgroup cpuacct.usage, per second of window); the operator's
reconciles per second and their p50 and p90 duration from its own ground truth (a hostPath),
also apart for the two kinds of call (those that write to the API server, milliseconds, and
the no-ops their writes trigger, tens of microseconds: the overall p50 falls in whichever is
more), and how many of those reconciles have their span in the trace (all: none lost). The
agent image's size: the archive, the compressed content containerd holds, and unpacked (its
snapshot's usage).

    python -m bench.node [--repeat N] [--window S] [--json build/bench-node.json] [--keep]

Root only (scripts/cluster); every cluster started is taken down (scripts/cluster down),
every process started is ended by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from hashlib import sha256
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import wait_until  # noqa: E402
from kubernetes import client, config  # noqa: E402
from node.pods import OutsideTracer  # noqa: E402
from realops.operators import CR_BUILDS, GROUP, PLURAL, VERSION, install_crd  # noqa: E402

import tracer  # noqa: E402
from bench.real_operator import percentile  # noqa: E402

CLUSTER = ROOT / "scripts" / "cluster"
TRACER = [sys.executable, "-m", "tracer"]
AGENTS = ("ephemeral", "node")
BUILD = CR_BUILDS["cr-operator-stripped"]
OPERATOR_USER = 65532  # distroless's nonroot, as real operators run
POD = "cr-bench"
AGENT_LABEL = "app.kubernetes.io/name=tracer-agent"
WRITE_MS = 1.0  # a reconcile longer than this wrote to the API server (see operator_figures)


def run(argv: list[str], timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    """(seconds, result) of ARGV, which must succeed."""
    t0 = time.monotonic()
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout)
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv[:3]))} failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return seconds, done


# --- the agent image ------------------------------------------------------------------------


def agent_archive() -> Path:
    """scripts/build-agent-image's archive (built now if the tracer changed)."""
    _, done = run([ROOT / "scripts" / "build-agent-image"], timeout=900)
    return Path(next(line for line in done.stdout.splitlines() if line.endswith(".tar")))


def chain_id(archive: Path) -> str:
    """The snapshot key containerd unpacks the image's top layer to (the chain of its
    diff_ids)."""
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> dict:
            return json.load(tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}"))

        index = json.load(tar.extractfile("index.json"))
        manifest = blob(index["manifests"][0]["digest"])
        diff_ids = blob(manifest["config"]["digest"])["rootfs"]["diff_ids"]
    chain = diff_ids[0]
    for diff in diff_ids[1:]:
        chain = "sha256:" + sha256(f"{chain} {diff}".encode()).hexdigest()
    return chain


UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def human_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


def image_sizes(sock: Path, archive: Path, ref: str) -> dict:
    """MB: the archive, the content containerd holds (`ctr images ls`), unpacked (the
    snapshot chain's usage)."""
    ctr = ["ctr", "-a", str(sock), "-n", "k8s.io"]
    _, listed = run([*ctr, "images", "ls"])
    content = None
    for line in listed.stdout.splitlines():
        if line.startswith(ref + " "):
            content = human_bytes(" ".join(re.search(r"([\d.]+) (\w?i?B)\s", line).groups()))
    unpacked = 0.0
    key = chain_id(archive)
    # Every snapshot from the top layer's down to the first (one layer here).
    _, snaps = run([*ctr, "snapshots", "--snapshotter", "overlayfs", "ls"])
    parents = {}
    for line in snaps.stdout.splitlines()[1:]:
        parts = line.split()
        parents[parts[0]] = parts[1] if len(parts) == 3 else None
    _, usage = run([*ctr, "snapshots", "--snapshotter", "overlayfs", "usage"])
    sizes = {}
    for line in usage.stdout.splitlines()[1:]:
        parts = line.split()
        sizes[parts[0]] = human_bytes(f"{parts[1]} {parts[2]}")
    while key:
        unpacked += sizes.get(key, 0.0)
        key = parents.get(key)
    mb = 1e6
    return {"archive_mb": round(archive.stat().st_size / mb, 1),
            "content_mb": round(content / mb, 1) if content else None,
            "unpacked_mb": round(unpacked / mb, 1) if unpacked else None}


# --- the workload ---------------------------------------------------------------------------


class Steady:
    """One Memcached patched every PERIOD s (spec.size cycling) from a thread of its own,
    until stop()."""

    def __init__(self, kubeconfig: Path, namespace: str = "default", period: float = 0.1):
        self.api = config.new_client_from_config(str(kubeconfig))
        self.co = client.CustomObjectsApi(self.api)
        self.namespace = namespace
        self.period = period
        self.name = "steady"
        self.patches = 0
        self.errors = 0
        self._stop = threading.Event()
        self.co.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Memcached",
            "metadata": {"name": self.name}, "spec": {"size": 1}})
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.co.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name,
                    {"spec": {"size": 1 + self.patches % 5}})
                self.patches += 1
            except Exception:  # noqa: BLE001 - counted: the API server busy for a moment
                self.errors += 1
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


# --- the agent's processes ------------------------------------------------------------------


def container_cgroup(container_id: str) -> tuple[list[int], str] | None:
    """The PIDs whose cgroup names CONTAINER_ID, and that cgroup's path (cpuacct's)."""
    pids, path = [], None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                text = f.read()
        except OSError:
            continue
        if container_id in text:
            pids.append(int(entry))
            for line in text.splitlines():
                _, controllers, cg = line.split(":", 2)
                if "cpuacct" in controllers.split(",") or (controllers == "" and path is None):
                    path = cg
    return (pids, path) if pids else None


def cpu_usage_ns(cgroup_path: str) -> int | None:
    v1 = Path("/sys/fs/cgroup/cpuacct") / cgroup_path.lstrip("/") / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text())
    v2 = Path("/sys/fs/cgroup") / cgroup_path.lstrip("/") / "cpu.stat"
    if v2.exists():
        for line in v2.read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * 1000
    return None


def procs_of(cgroup_path: str, container_id: str) -> list[int]:
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup"):
        procs = Path(base) / cgroup_path.lstrip("/") / "cgroup.procs"
        if procs.exists():
            try:
                return [int(p) for p in procs.read_text().split()]
            except OSError:
                break
    found = container_cgroup(container_id)
    return found[0] if found else []


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def agent_container_id(core: client.CoreV1Api, kind: str) -> str:
    """The running agent container's id (as the kubelet reports it, without the runtime)."""
    def find() -> str | None:
        if kind == "ephemeral":
            pod = core.read_namespaced_pod(POD, "default")
            statuses = pod.status.ephemeral_container_statuses or []
        else:
            statuses = [s for p in core.list_namespaced_pod(
                "default", label_selector=AGENT_LABEL).items
                for s in p.status.container_statuses or []]
        for s in statuses:
            if s.state and s.state.running and s.container_id:
                return s.container_id.split("://", 1)[1]
        return None

    return wait_until(find, 60, f"the {kind} agent container running", 0.2)


# --- the tracer, from outside ---------------------------------------------------------------


class Outside(OutsideTracer):
    """`tracer attach` in a PID namespace of its own, like a laptop (tests/node/pods.py),
    with the time it was started."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.started = time.monotonic()
        super().__init__(args, cwd)

    def stop(self, timeout: float = 60) -> int:
        if self.unshare.poll() is None:
            try:
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                return self.unshare.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.unshare.pid, signal.SIGKILL)
                self.unshare.wait()
        return self.unshare.returncode


class TraceFile:
    """The local trace file, read as it grows (whole lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""
        self.lines: list[dict] = []

    def poll(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path) as f:
            f.seek(self.offset)
            data = f.read()
            self.offset = f.tell()
        text = self.partial + data
        *whole, self.partial = text.split("\n")
        new = [json.loads(line) for line in whole if line]
        self.lines += new
        return new


def reconciles(truth: Path, opened: int, closed: int) -> list[dict]:
    out = []
    for line in truth.read_text().splitlines():
        if '"entry_ns"' in line:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line being written
            if opened <= r["entry_ns"] and r["exit_ns"] <= closed:
                out.append(r)
    return out


def operator_figures(truth: Path, opened: int, closed: int) -> dict:
    calls = reconciles(truth, opened, closed)
    durations = [(r["exit_ns"] - r["entry_ns"]) / 1e6 for r in calls]
    seconds = (closed - opened) / 1e9
    # Two kinds of call, far apart: the ones that write (a change: the status and the owned
    # ConfigMap patched, milliseconds) and the no-ops (what the operator's own writes
    # trigger, tens of microseconds). The overall median falls in whichever is the larger
    # share, so each kind is given too.
    writes = [d for d in durations if d > WRITE_MS]
    noops = [d for d in durations if d <= WRITE_MS]

    def med(values: list[float]) -> float | None:
        return round(statistics.median(values), 3) if values else None

    return {"reconciles": len(calls), "reconciles_per_s": round(len(calls) / seconds, 2),
            "p50_ms": med(durations),
            "p90_ms": round(percentile(durations, 0.9), 3) if durations else None,
            "writes_per_s": round(len(writes) / seconds, 2), "writes_p50_ms": med(writes),
            "noops_per_s": round(len(noops) / seconds, 2), "noops_p50_ms": med(noops)}


def traced(kind: str, cluster_dir: Path, truth: Path, image: str, folder: Path,
           window: float, core: client.CoreV1Api) -> dict:
    trace = TraceFile(folder / f"trace-{kind}.jsonl")
    row: dict = {"agent": kind}
    tracer_run = Outside(["attach", POD, "--agent", kind, "--agent-image", image,
                          "--kubeconfig", str(cluster_dir / "admin.kubeconfig"),
                          "-o", str(trace.path), "--quiet", "--watch", "none"], folder)
    try:
        header_at = span_at = None
        deadline = time.monotonic() + 180
        while span_at is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: no span after 180 s: {tracer_run.stderr()[-2000:]}")
            if tracer_run.unshare.poll() is not None:
                raise RuntimeError(f"{kind}: the tracer exited: {tracer_run.stderr()[-2000:]}")
            for line in trace.poll():
                now = time.monotonic()
                if line["type"] == "header" and header_at is None:
                    header_at = now
                    row["attach_pause_ms"] = line.get("attach_pause_ms")
                elif line["type"] == "span":
                    span_at = now
            time.sleep(0.01)
        row["to_header_s"] = round(header_at - tracer_run.started, 3)
        row["to_first_span_s"] = round(span_at - tracer_run.started, 3)

        container_id = agent_container_id(core, kind)
        found = wait_until(lambda: container_cgroup(container_id), 10,
                           f"the {kind} agent's processes")
        pids, cgroup_path = found
        time.sleep(1.0)  # past the first span's burst
        opened = time.monotonic_ns()
        cpu0 = cpu_usage_ns(cgroup_path)
        rss_max = 0
        per_proc: dict[int, int] = {}
        end = time.monotonic() + window
        while time.monotonic() < end:
            total = 0
            for pid in procs_of(cgroup_path, container_id):
                kb = rss_kb(pid)
                total += kb
                per_proc[pid] = max(per_proc.get(pid, 0), kb)
            rss_max = max(rss_max, total)
            time.sleep(0.25)
        cpu1 = cpu_usage_ns(cgroup_path)
        closed = time.monotonic_ns()
        row["processes"] = {f"{pid} {comm(pid)}": round(kb / 1024, 1)
                            for pid, kb in sorted(per_proc.items())}
        row["agent_rss_max_mb"] = round(rss_max / 1024, 1)
        row["agent_cpu_s_per_s"] = (round((cpu1 - cpu0) / 1e9 / ((closed - opened) / 1e9), 4)
                                    if cpu0 is not None and cpu1 is not None else None)
        row.update(operator_figures(truth, opened, closed))
        t0 = time.monotonic()
        code = tracer_run.stop()
        row["detach_s"] = round(time.monotonic() - t0, 3)
        trace.poll()  # the whole file: a span ended in the window may arrive after it
        spans = [r for r in trace.lines if r["type"] == "span" and r["end_ns"] is not None]
        row["spans_matched"] = sum(
            any(s["goroutine"] == c["goroutine"] and s["start_ns"] <= c["entry_ns"]
                and s["end_ns"] >= c["exit_ns"] for s in spans)
            for c in reconciles(truth, opened, closed))
        last = trace.lines[-1] if trace.lines else {}
        row["code_restored"] = last.get("code_restored") if last.get("type") == "end" else None
        if code != 0:
            raise RuntimeError(f"{kind}: tracer exit {code}: {tracer_run.stderr()[-2000:]}")
    finally:
        tracer_run.stop()
    if kind == "node":
        wait_until(lambda: not core.list_namespaced_pod(
            "default", label_selector=AGENT_LABEL).items, 60, "the node agent pod removed", 0.2)
    return row


# --- one repeat -----------------------------------------------------------------------------


def one_repeat(i: int, tmp: Path, archive: Path, window: float) -> dict:
    folder = tmp / f"run-{i}"
    folder.mkdir()
    cluster_dir = folder / "cluster"
    image = f"localhost/tracer-agent:{tracer.__version__}"
    row: dict = {"repeat": i}
    try:
        row["up_s"] = round(run([CLUSTER, "up", "--dir", cluster_dir], 400)[0], 3)
        sock = cluster_dir / "containerd" / "containerd.sock"
        api = config.new_client_from_config(str(cluster_dir / "admin.kubeconfig"))
        core = client.CoreV1Api(api)
        install_crd(api)
        row["import_s"] = round(run(["ctr", "-a", sock, "-n", "k8s.io", "images", "import",
                                     archive])[0], 3)
        if i == 0:
            row["image"] = image_sizes(sock, archive, image)

        truth_dir = folder / "truth"
        truth_dir.mkdir()
        os.chown(truth_dir, OPERATOR_USER, OPERATOR_USER)
        truth = truth_dir / "truth.jsonl"
        running_at: list[float] = []

        def watch_running(stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    pod = core.read_namespaced_pod(POD, "default")
                    if pod.status.phase == "Running":
                        running_at.append(time.monotonic())
                        return
                except client.ApiException:
                    pass
                stop.wait(0.05)

        stop = threading.Event()
        watcher = threading.Thread(target=watch_running, args=(stop,), daemon=True)
        t0 = time.monotonic()
        watcher.start()
        try:
            row["run_operator_s"] = round(run(
                [CLUSTER, "run-operator", "--dir", cluster_dir, "--mount",
                 f"{truth_dir}:/truth", "--user", str(OPERATOR_USER), POD, BUILD.binary,
                 "--ground-truth", "/truth/truth.jsonl", "--leader-elect=false",
                 "--max-concurrent-reconciles", "4", "--namespace", "default"], 300)[0], 3)
        finally:
            stop.set()
            watcher.join(5)
        row["to_running_s"] = round(running_at[0] - t0, 3) if running_at else None
        wait_until(lambda: "ready" in (core.read_namespaced_pod_log(POD, "default") or ""),
                   60, "the operator to log 'ready'", 0.1)
        row["to_ready_s"] = round(time.monotonic() - t0, 3)

        steady = Steady(cluster_dir / "admin.kubeconfig")
        try:
            time.sleep(3)  # the informers and the first reconciles settle
            opened = time.monotonic_ns()
            time.sleep(window)
            row["untraced"] = operator_figures(truth, opened, time.monotonic_ns())
            order = AGENTS if i % 2 == 0 else AGENTS[::-1]
            for kind in order:
                agent = traced(kind, cluster_dir, truth, image, folder, window, core)
                agent["up_to_first_span_s"] = round(
                    row["up_s"] + row["import_s"] + row["run_operator_s"]
                    + agent["to_first_span_s"], 3)
                row[kind] = agent
                print(f"  {kind}: header {agent['to_header_s']} s, first span "
                      f"{agent['to_first_span_s']} s, agent {agent['agent_rss_max_mb']} MB "
                      f"{agent['agent_cpu_s_per_s']} CPU s/s", flush=True)
            opened = time.monotonic_ns()
            time.sleep(window)
            row["untraced_after"] = operator_figures(truth, opened, time.monotonic_ns())
        finally:
            steady.stop()
            row["workload"] = {"patches": steady.patches, "errors": steady.errors}
    finally:
        down = subprocess.run([str(CLUSTER), "down", "--dir", str(cluster_dir)],
                              capture_output=True, text=True, timeout=300)
        if down.returncode != 0:
            print(f"bench-node: scripts/cluster down --dir {cluster_dir} failed: "
                  f"{down.stderr.strip()}", file=sys.stderr)
    return row


# --- summary --------------------------------------------------------------------------------


def stat(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for key in ("up_s", "import_s", "run_operator_s", "to_running_s", "to_ready_s"):
        out[key] = stat([r.get(key) for r in runs])
    figures = ("reconciles_per_s", "p50_ms", "p90_ms", "writes_per_s", "writes_p50_ms",
               "noops_per_s", "noops_p50_ms")
    for key in figures:
        out[f"untraced_{key}"] = stat([r[w][key] for r in runs
                                       for w in ("untraced", "untraced_after") if w in r])
    for kind in AGENTS:
        rows = [r[kind] for r in runs if kind in r]
        out[kind] = {key: stat([a.get(key) for a in rows]) for key in (
            "to_header_s", "to_first_span_s", "up_to_first_span_s", "attach_pause_ms",
            "agent_rss_max_mb", "agent_cpu_s_per_s", *figures, "detach_s")}
        out[kind]["every_reconcile_has_its_span"] = all(a["spans_matched"] == a["reconciles"]
                                                       for a in rows)
        out[kind]["code_restored"] = all(a.get("code_restored") is True for a in rows)
    return out


def fmt(s: dict | None, unit: str = "", spec: str = ".1f") -> str:
    if not s:
        return "-"
    return (f"{s['median']:{spec}}{unit} ({s['min']:{spec}}–{s['max']:{spec}}, "
            f"n={s['n']})")


def operator_lines(s: dict, prefix: str) -> None:
    print(f"    reconciles                {fmt(s[prefix + 'reconciles_per_s'], '/s')}, p50 "
          f"{fmt(s[prefix + 'p50_ms'], ' ms', '.2f')}")
    print(f"      writing (> {WRITE_MS:g} ms)        {fmt(s[prefix + 'writes_per_s'], '/s')}, "
          f"p50 {fmt(s[prefix + 'writes_p50_ms'], ' ms', '.2f')}")
    print(f"      no-op                   {fmt(s[prefix + 'noops_per_s'], '/s')}, p50 "
          f"{fmt(s[prefix + 'noops_p50_ms'], ' ms', '.3f')}")


def print_summary(summary: dict, image: dict | None) -> None:
    print("median (range, n):")
    print(f"  scripts/cluster up          {fmt(summary['up_s'], ' s')}")
    print(f"  agent image import          {fmt(summary['import_s'], ' s')}")
    print(f"  run-operator                {fmt(summary['run_operator_s'], ' s')}  "
          f"(Running after {fmt(summary['to_running_s'], ' s')})")
    print("  untraced (before and after the agents):")
    operator_lines(summary, "untraced_")
    for kind in AGENTS:
        a = summary[kind]
        print(f"  --agent {kind}:")
        print(f"    attach to header          {fmt(a['to_header_s'], ' s')}")
        print(f"    attach to first span      {fmt(a['to_first_span_s'], ' s')}")
        print(f"    up to first span          {fmt(a['up_to_first_span_s'], ' s')}")
        print(f"    agent RSS max             {fmt(a['agent_rss_max_mb'], ' MB')}")
        print(f"    agent CPU                 {fmt(a['agent_cpu_s_per_s'], ' s/s', '.3f')}")
        operator_lines(a, "")
        print(f"    every reconcile has its span: {a['every_reconcile_has_its_span']}, "
              f"code restored: "
              f"{a['code_restored']}")
    if image:
        print(f"  agent image: archive {image['archive_mb']} MB, in containerd "
              f"{image['content_mb']} MB, unpacked {image['unpacked_mb']} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", type=float, default=20.0,
                        help="seconds of steady workload measured, untraced and per agent")
    parser.add_argument("--json", default="build/bench-node.json")
    parser.add_argument("--keep", action="store_true", help="keep the traces and ground truth")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-node: run as root (scripts/cluster needs it)")
    runs = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-node-"))
    try:
        # A copy: a build of a changed tracer meanwhile replaces the cached archive.
        archive = Path(shutil.copy(agent_archive(), tmp / "tracer-agent.tar"))
        for i in range(args.repeat):
            print(f"repeat {i + 1}/{args.repeat}", flush=True)
            runs.append(one_repeat(i, tmp, archive, args.window))
    finally:
        if args.keep:
            print(f"kept {tmp} (traces, ground truth, the clusters' logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    image = runs[0].get("image")
    summary = summarize(runs)
    print_summary(summary, image)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "repeat": args.repeat, "window_s": args.window, "operator": BUILD.name,
        "workload": "one Memcached patched every 100 ms", "load_1min": os.getloadavg()[0],
        "image": image, "summary": summary, "runs": runs}, indent=2) + "\n")
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
