"""Atomic file writes and the cluster directory's layout."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write to a temporary name beside PATH, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Layout:
    """Where each piece of the cluster lives under DIR."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.pki = self.root / "pki"
        self.pids = self.root / "pids"
        self.logs = self.root / "logs"
        self.etcd = self.root / "etcd"
        self.containerd = self.root / "containerd"
        self.socket = self.containerd / "containerd.sock"
        self.cni_conf = self.root / "cni" / "net.d"
        self.cni_ipam = self.root / "cni" / "ipam"
        self.kubelet = self.root / "kubelet"
        self.pod_logs = self.root / "pod-logs"
        self.images = self.root / "images"
        self.state = self.root / "state.json"
        self.admin_kubeconfig = self.root / "admin.kubeconfig"
        self.pod_kubeconfig = self.root / "pod.kubeconfig"
        # Written first by `up` (before anything else in DIR), kept by `down` with logs/ and
        # .lock: what says that DIR is a cluster's, so `up` and `down` may remove what they made.
        self.marker = self.root / ".tracer-cluster"

    def made(self) -> list[Path]:
        """What `up` makes in DIR and `down` removes, state.json last; nothing else in DIR is
        ever removed (logs/, .lock and the marker stay)."""
        return [self.pki, self.pids, self.etcd, self.containerd, self.root / "cni", self.kubelet,
                self.pod_logs, self.images, self.admin_kubeconfig, self.pod_kubeconfig,
                self.state]
