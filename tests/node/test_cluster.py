"""The one-node cluster (scripts/cluster) as a user checks it: the real controller-runtime
operator runs as a non-root pod that the real kubelet started on the bridge network, reconciles
what is created through the API, is never restarted; `down` leaves nothing behind."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from helpers import wait_until
from kube.objects import read_jsonl
from kubernetes import client
from realops.operators import CR_BUILDS, GROUP, PLURAL, VERSION, install_crd

from node.pods import container_pid

from .cluster import ROOT, SCRIPT, down, up

OPERATOR_USER = 65532  # distroless's nonroot, as real operators run
ARGS = ["--ground-truth", "/truth/truth.jsonl", "--leader-elect=false"]


def truth_dir(tmp_path: Path) -> Path:
    d = tmp_path / "truth"
    d.mkdir()
    os.chown(d, OPERATOR_USER, OPERATOR_USER)  # the operator writes its ground truth there
    return d


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for PID {pid}")


def test_operator_pod_reconciles(node_cluster, tmp_path):
    install_crd(node_cluster.api_client)
    truth = truth_dir(tmp_path)
    pod = node_cluster.run_operator("cr-smoke", CR_BUILDS["cr-operator-stripped"].binary, ARGS,
                                    mounts={str(truth): "/truth"}, user=OPERATOR_USER)
    core = node_cluster.core
    assert pod.spec.node_name == node_cluster.node
    assert pod.status.phase == "Running"
    # A pod address on the bridge, not the host's network.
    subnet = ipaddress.ip_network(node_cluster.state["subnet"])
    assert ipaddress.ip_address(pod.status.pod_ip) in subnet

    # Its process: started through containerd under the kubelet's cgroups, and not root.
    status = pod.status.container_statuses[0]
    pid = container_pid(node_cluster, status.container_id)
    assert uid_of(pid) == OPERATOR_USER
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"/{node_cluster.state['cgroup_root']}/kubepods" in cgroups, cgroups

    # The kubelet serves its log to the API server (client certificate, webhook authorization).
    wait_until(lambda: "ready" in (core.read_namespaced_pod_log("cr-smoke", "default") or ""),
               60, "the operator to log 'ready'")
    client.CustomObjectsApi(node_cluster.api_client).create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Memcached",
         "metadata": {"name": "mc-smoke"}, "spec": {"size": 1}})
    records = wait_until(
        lambda: [r for r in read_jsonl(truth / "truth.jsonl") if r.get("name") == "mc-smoke"],
        60, "a reconcile of mc-smoke in the ground truth")
    assert records[0]["namespace"] == "default" and records[0]["error"] is None
    cm = core.read_namespaced_config_map("mc-smoke-config", "default")
    assert cm.data == {"size": "1"}

    pod = core.read_namespaced_pod("cr-smoke", "default")
    assert pod.status.container_statuses[0].restart_count == 0
    core.delete_namespaced_pod("cr-smoke", "default", grace_period_seconds=5)


def test_run_operator_reports_the_kubelets_reason(node_cluster, tmp_path):
    # A binary that exits at once: the kubelet's own account of it, not a timeout.
    exits = tmp_path / "exits"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(exits), "-x", "c", "-"], check=True,
                   input="int main(void) { return 3; }\n", text=True)
    run = subprocess.run([
        "scripts/cluster", "run-operator", "--dir", str(node_cluster.dir), "--timeout", "60",
        "exits-at-once", str(exits)], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parent.parent.parent)
    assert run.returncode == 1, run
    assert "exit code 3" in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    node_cluster.core.delete_namespaced_pod("exits-at-once", "default", grace_period_seconds=0)


def test_down_leaves_nothing(tmp_path_factory, tmp_path):
    """A second cluster (beside the session's: own subnet, ports and cgroup root) with an
    operator pod in it, taken down: no recorded process, no shim, mount, bridge or cgroup left,
    and a second `down` is fine."""
    directory = tmp_path_factory.mktemp("down-cluster")
    try:
        cluster = up(directory)
        install_crd(cluster.api_client)
        cluster.run_operator("cr-down", CR_BUILDS["cr-operator-stripped"].binary, ARGS,
                             mounts={str(truth_dir(tmp_path)): "/truth"}, user=OPERATOR_USER)
        state = cluster.state
        pids = dict(cluster.pids())
        sock = str(directory / "containerd" / "containerd.sock")
        shims = [p for p in _processes() if sock in p[1]]
        assert shims, "no containerd shim for the pod"
        pids.update({f"shim {pid}": pid for pid, _ in shims})
        assert set(pids) >= {"etcd", "kube-apiserver", "containerd", "kubelet"}
    finally:
        run = down(directory)
    assert run.returncode == 0, run.stderr
    alive = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not alive
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(str(directory))]
    assert not mounts
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True,
                                      check=True).stdout)
    assert state["bridge"] not in {link["ifname"] for link in links}
    assert not [h for h in Path("/sys/fs/cgroup").iterdir() if (h / state["cgroup_root"]).exists()]
    # What up made is gone; the logs, the lock and the marker stay (the next up may use DIR).
    assert {p.name for p in directory.iterdir()} == {"logs", ".lock", ".tracer-cluster"}
    assert down(directory).returncode == 0


def _processes() -> list[tuple[int, str]]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                argv = (p / "cmdline").read_bytes().replace(b"\0", b" ")
                out.append((int(p.name), argv.decode(errors="replace")))
            except OSError:
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _tree(directory: Path) -> dict[str, str | None]:
    """Every path under DIRECTORY with a file's content (None for a directory)."""
    return {str(p.relative_to(directory)): None if p.is_dir() else p.read_text()
            for p in sorted(directory.rglob("*"))}


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_up_and_down_refuse_a_directory_that_is_not_a_clusters(tmp_path):
    """No marker, no state.json, and something in it: neither `up` nor `down` touches it, even
    what has the name of something `up` makes (pki/)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not the cluster's\n")
    (mine / "pki").mkdir()
    (mine / "pki" / "ca.key").write_text("someone else's key\n")
    before = _tree(mine)
    for command in ("up", "down"):
        run = _script(command, "--dir", str(mine))
        assert run.returncode == 2, (command, run)
        assert run.stderr.count("\n") == 1 and "holds no cluster" in run.stderr, run.stderr
        assert run.stdout == ""
        assert _tree(mine) == before, command
    # `down` of a directory that does not exist makes nothing.
    assert _script("down", "--dir", str(tmp_path / "absent")).returncode == 0
    assert not (tmp_path / "absent").exists()


def test_a_failed_up_removes_only_what_up_made(tmp_path, monkeypatch):
    """In a cluster's directory (its marker) with a file of someone else's: an `up` refused by
    a missing prerequisite touches nothing; an `up` that fails after making things removes
    those (Layout.made) and leaves the rest."""
    d = tmp_path / "cluster"
    d.mkdir()
    (d / ".tracer-cluster").write_text("marker\n")
    (d / "mine.txt").write_text("keep me\n")
    before = _tree(d)
    run = _script("up", "--dir", str(d), env={"TRACER_KUBERNETES_VERSION": "0.0.0-none"})
    assert run.returncode == 1, run
    assert run.stderr.count("\n") == 1 and "missing kube-apiserver" in run.stderr, run.stderr
    assert _tree(d) == before  # checked before DIR is touched: not even .lock

    # A failure past the checks (in-process, no cluster needed): `up` made pki/, etcd/,
    # state.json and a log, then failed; the `down` it runs removes those and nothing else.
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from clusterlib import main as cluster_main
    from clusterlib import node

    def failing_up(lay) -> float:
        for sub in (lay.pki, lay.etcd / "member", lay.logs):
            sub.mkdir(parents=True)
        (lay.pki / "ca.key").write_text("the cluster's\n")
        (lay.logs / "etcd.log").write_text("a log\n")
        lay.state.write_text("{}\n")
        raise node.ClusterError("etcd exited before etcd healthy")

    monkeypatch.setattr(node, "check_host", lambda: None)
    monkeypatch.setattr(node, "up", failing_up)
    assert cluster_main.main(["up", "--dir", str(d)]) == 1
    assert _tree(d) == {**before, ".lock": "", "logs": None, "logs/etcd.log": "a log\n"}


def test_outside_text_reaches_the_terminal_inert(tmp_path, monkeypatch):
    """A termination message, an event's and the API server's: no escape sequence, one line."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from clusterlib import operator
    from clusterlib.api import ApiError

    evil = "\x1b]0;owned\x07\x1b[2J\nforged line\r\u202e"
    pod = {"status": {"containerStatuses": [{"name": "operator", "state": {"terminated": {
        "reason": "Error", "exitCode": 1, "message": evil}}}]}}
    for text in (operator._container_problem(pod), str(ApiError(422, evil))):
        assert text and not any(c in text for c in "\x1b\x07\n\r\u202e"), text
        assert "forged line" in text
