"""A real one-node Kubernetes cluster for the tests: `scripts/cluster up --dir <tmp>` (etcd,
kube-apiserver and kubelet of scripts/build-kubernetes, containerd + runc, a CNI bridge), and
`scripts/cluster down` at the end of the session, always.

The fixture `node_cluster` (session scope, tests/node/conftest.py) is a NodeCluster:

  dir            Path    the cluster's directory (logs/, pids/, pki/, state.json, ...)
  kubeconfig     Path    admin (system:masters) kubeconfig, server https://127.0.0.1:PORT
  pod_kubeconfig Path    the same user, server on the pod bridge's gateway (what pods use)
  node           str     the node's name (also `node_name`)
  api_client     kubernetes.client.ApiClient, admin
  core           kubernetes.client.CoreV1Api
  server         str     the API server's URL from the host
  ca_cert, ca_key Path   the cluster CA (to make more users' client certificates)
  up_seconds     float   how long `up` took
  run_operator(name, binary, args=(), env=None, mounts=None, user=None,
               namespace="default", timeout=90) -> V1Pod
                 a binary as Pod NAME (image built and imported on the spot: a dynamic one
                 with its ELF interpreter and shared libraries), once Running; mounts maps
                 host path -> path in the pod (hostPath); fails the test with the kubelet's
                 reason if the pod does not get to Running
  import_image(archive)   an OCI archive (scripts/oci-image) into the node's containerd
  import_agent_image() -> str  the agent image (scripts/build-agent-image, cached once per
                 tracer version) imported into the node's containerd, once; its reference
  user_kubeconfig(user, path) -> Path   a kubeconfig for another user (no groups)
  pids() -> dict[str, int]  the daemons `up` recorded (etcd, kube-apiserver, containerd, kubelet)

If the cluster cannot start on this machine, the fixture FAILS with `up`'s error (never skips).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "scripts" / "cluster"
# The cluster's own modules (scripts/clusterlib), for what the tests make as `up` does.
sys.path.insert(0, str(ROOT / "scripts"))


@dataclass
class NodeCluster:
    dir: Path
    up_seconds: float = 0.0
    api_client: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api_client = config.new_client_from_config(str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api_client)

    @property
    def state(self) -> dict:
        return json.loads((self.dir / "state.json").read_text())

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def pod_kubeconfig(self) -> Path:
        return self.dir / "pod.kubeconfig"

    @property
    def node(self) -> str:
        return self.state["node"]

    node_name = node

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.state['apiserver_port']}"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "pki" / "ca.key"

    def user_kubeconfig(self, user: str, path: Path) -> Path:
        """A kubeconfig at PATH for USER (no groups): a client certificate from the cluster's
        CA, made as `up` makes its own (scripts/clusterlib/pki.py)."""
        from clusterlib.pki import Pki, kubeconfig

        crt, key = Pki(self.ca_cert.parent).issue(f"user-{user}", user)
        kubeconfig(path, self.server, self.ca_cert, crt, key, user)
        return path

    def pids(self) -> dict[str, int]:
        return {f.stem: json.loads(f.read_text())["pid"]
                for f in sorted((self.dir / "pids").glob("*.pid"))}

    def run_operator(self, name: str, binary: Path | str, args: Sequence[str] = (), *,
                     env: Mapping[str, str] | None = None,
                     mounts: Mapping[str, str] | None = None, user: int | None = None,
                     namespace: str = "default", timeout: float = 90) -> client.V1Pod:
        argv = [str(SCRIPT), "run-operator", "--dir", str(self.dir), "--namespace", namespace,
                "--timeout", str(timeout)]
        for k, v in (env or {}).items():
            argv += ["--env", f"{k}={v}"]
        for host, in_pod in (mounts or {}).items():
            argv += ["--mount", f"{host}:{in_pod}"]
        if user is not None:
            argv += ["--user", str(user)]
        run = subprocess.run([*argv, name, str(binary), *args], capture_output=True, text=True,
                             timeout=timeout + 120)
        if run.returncode != 0:
            pytest.fail(f"scripts/cluster run-operator {name} failed (exit {run.returncode}): "
                        f"{run.stderr.strip()}", pytrace=False)
        return self.core.read_namespaced_pod(name, namespace)

    def import_agent_image(self) -> str:
        if getattr(self, "_agent_image", None) is None:
            sock = self.dir / "containerd" / "containerd.sock"
            build = subprocess.run([str(ROOT / "scripts" / "build-agent-image"), "--import",
                                    "--address", str(sock)], capture_output=True, text=True,
                                   timeout=600)
            if build.returncode != 0:
                pytest.fail(f"scripts/build-agent-image failed: {build.stderr.strip()}",
                            pytrace=False)
            self._agent_image = build.stdout.split()[-1]
        return self._agent_image

    def import_image(self, archive: Path | str) -> None:
        sock = self.dir / "containerd" / "containerd.sock"
        run = subprocess.run(["ctr", "--address", str(sock), "--namespace", "k8s.io", "images",
                              "import", "--snapshotter", "overlayfs", str(archive)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            pytest.fail(f"importing {archive}: {run.stderr.strip()}", pytrace=False)


def _cluster(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def up(directory: Path) -> NodeCluster:
    run = _cluster("up", "--dir", str(directory), timeout=400)
    if run.returncode != 0:
        pytest.fail(f"scripts/cluster up failed (exit {run.returncode}): {run.stderr.strip()}",
                    pytrace=False)
    seconds = 0.0
    for line in run.stderr.splitlines():
        if line.startswith("cluster: up in "):
            seconds = float(line.split()[3])
    return NodeCluster(directory, seconds)


def down(directory: Path) -> subprocess.CompletedProcess:
    return _cluster("down", "--dir", str(directory), timeout=300)


def node_cluster_fixture(tmp_path_factory) -> Iterator[NodeCluster]:
    directory = tmp_path_factory.mktemp("node-cluster")
    try:
        yield up(directory)
    finally:
        # Always, also after a failed `up` (which stops what it started, but a Ctrl-C may not).
        run = down(directory)
        if run.returncode != 0:
            raise AssertionError(f"scripts/cluster down failed: {run.stderr.strip()}")
