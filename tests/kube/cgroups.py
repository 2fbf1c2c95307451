"""Cgroups shaped like the ones kubelet and its container runtime make, in cgroup v1 or v2.

The paths follow kubelet's two cgroup drivers:
  systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
            cri-containerd-<id>.scope   (crio-<id>.scope, docker-<id>.scope)
  cgroupfs: /kubepods/burstable/pod<uid>/<id>
Guaranteed pods sit directly under kubepods, as kubelet puts them.

Each tree is made below the cgroup the test process already is in, in every hierarchy, so the
test machine's own accounting (e.g. a memory limit on the test run) still covers the processes;
on a host whose tests run in the root cgroup the paths are exactly kubelet's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RUNTIME_SCOPE_PREFIX = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}
QOS_CLASSES = ("guaranteed", "burstable", "besteffort")


def kubelet_cgroup(driver: str, qos: str, pod_uid: str, container_id: str, runtime: str) -> str:
    """The container's cgroup path as kubelet and the runtime name it."""
    if qos not in QOS_CLASSES:
        raise ValueError(f"qos must be one of {QOS_CLASSES}, not {qos!r}")
    if driver == "systemd":
        uid = pod_uid.replace("-", "_")
        if qos == "guaranteed":
            pod = f"/kubepods.slice/kubepods-pod{uid}.slice"
        else:
            pod = f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice"
        return f"{pod}/{RUNTIME_SCOPE_PREFIX[runtime]}-{container_id}.scope"
    if driver == "cgroupfs":
        pod = f"/kubepods/pod{pod_uid}" if qos == "guaranteed" else f"/kubepods/{qos}/pod{pod_uid}"
        return f"{pod}/{container_id}"
    raise ValueError(f"driver must be 'systemd' or 'cgroupfs', not {driver!r}")


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    controllers: str  # as in /proc/self/cgroup: "memory", "cpu,cpuacct", "name=systemd"; v2: ""
    mountpoint: Path
    root: str  # the cgroup mounted at mountpoint (not "/" when a sub-tree is mounted)
    base: str  # this process's cgroup, as /proc/self/cgroup shows it: "/" or "/process_api/…"

    def directory(self, path: str) -> Path:
        """The directory of the cgroup that /proc/PID/cgroup shows as `path`."""
        return self.mountpoint / os.path.relpath(path, self.root)


def _own_cgroups() -> dict[str, str]:
    """controllers -> path, from /proc/self/cgroup ("" is the v2 hierarchy)."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path
    return own


def _mounts() -> list[tuple[str, str, Path, set[str]]]:
    """(fstype, root, mountpoint, super options) of every cgroup mount."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        fields = left.split()
        fstype, _source, options = right.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((fstype, fields[3], Path(fields[4]), set(options.split(","))))
    return mounts


def v1_hierarchies() -> list[Hierarchy]:
    own = _own_cgroups()
    found: dict[str, Hierarchy] = {}
    for fstype, root, mountpoint, options in _mounts():
        if fstype != "cgroup":
            continue
        for controllers, path in own.items():
            if controllers and controllers not in found \
                    and set(controllers.split(",")) <= options:
                found[controllers] = Hierarchy(1, controllers, mountpoint, root, path)
    return list(found.values())


def v2_hierarchy() -> Hierarchy | None:
    own = _own_cgroups()
    if "" not in own:
        return None
    for fstype, root, mountpoint, _options in _mounts():
        if fstype == "cgroup2":
            return Hierarchy(2, "", mountpoint, root, own[""])
    return None


class Cgroup2Mount:
    """The cgroup v2 hierarchy: the mounted one, or one this object mounts on a temporary
    directory (a v1 host may have none mounted) and unmounts at close()."""

    def __init__(self) -> None:
        self._mounted: Path | None = None
        self.hierarchy = v2_hierarchy()
        if self.hierarchy is None:
            point = Path(tempfile.mkdtemp(prefix="tracer-cgroup2-"))
            subprocess.run(["mount", "-t", "cgroup2", "cgroup2", str(point)], check=True,
                           capture_output=True, text=True)
            self._mounted = point
            self.hierarchy = v2_hierarchy()
            if self.hierarchy is None:
                raise RuntimeError(f"mounted cgroup2 on {point} but cannot find it")

    def close(self) -> None:
        if self._mounted is not None:
            subprocess.run(["umount", str(self._mounted)], check=True)
            self._mounted.rmdir()
            self._mounted = None


@dataclass
class ContainerCgroup:
    """One container's cgroup, created in each given hierarchy; remove() deletes what it made."""

    path: str  # kubelet's path, e.g. /kubepods/burstable/pod<uid>/<id>
    hierarchies: list[Hierarchy]
    created: list[Path] = field(default_factory=list)

    def full_path(self, hierarchy: Hierarchy) -> str:
        """The path /proc/PID/cgroup shows for a member process in that hierarchy."""
        return hierarchy.base.rstrip("/") + self.path

    def procs_files(self) -> list[Path]:
        return [h.directory(self.full_path(h)) / "cgroup.procs" for h in self.hierarchies]

    def create(self) -> None:
        for hierarchy in self.hierarchies:
            # Another test session on this machine shares the kubepods parents and removes
            # them when its last pod goes: a parent that vanishes under us is made again.
            for _attempt in range(5):
                try:
                    self._create_in(hierarchy)
                    break
                except FileNotFoundError:
                    continue
            else:
                raise RuntimeError(f"could not create {self.path} in {hierarchy.mountpoint}")

    def _create_in(self, hierarchy: Hierarchy) -> None:
        parent = hierarchy.directory(hierarchy.base)
        for part in self.path.strip("/").split("/"):
            directory = parent / part
            try:
                directory.mkdir()
            except FileExistsError:
                parent = directory
                continue
            self.created.append(directory)
            # v1 cpuset starts a new cgroup with no CPUs and no memory nodes, which refuses
            # every task; runc copies the parent's as well.
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (parent / name).exists():
                    (directory / name).write_text((parent / name).read_text())
            parent = directory


def remove_cgroups(cgroups: list[ContainerCgroup], timeout: float = 5) -> None:
    """Remove the directories these cgroups created, deepest first, all together so a pod's
    directory goes once its last container's has. A directory that still has child cgroups
    (another pod's, under a shared kubepods parent) stays; a process that just exited may
    hold its cgroup a moment longer."""
    created = {d for cgroup in cgroups for d in cgroup.created}
    deadline = time.monotonic() + timeout
    for directory in sorted(created, key=lambda d: len(d.parts), reverse=True):
        while directory.exists() and not _has_child_cgroups(directory):
            try:
                directory.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    for cgroup in cgroups:
        cgroup.created.clear()


def _has_child_cgroups(directory: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return any(p.is_dir() for p in directory.iterdir())
    return False
