"""A container's processes on this node, found from its container id through /proc.

kubelet puts each container in a cgroup whose last component carries the container id:
  systemd driver   .../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope
                   (also crio-<id>.scope, docker-<id>.scope)
  cgroupfs driver  .../kubepods/burstable/pod<uid>/<id>
in every hierarchy of cgroup v1 and in the one of v2. A PID namespace hides nothing from the
host's /proc, so the host PID is simply the directory's name. When cgroups tell nothing (a
runtime that nests them differently), the runtime's per-container paths in mountinfo do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# What a runtime writes in front of the id, in `containerID` and in cgroup names.
RUNTIME_PREFIXES = ("containerd://", "cri-o://", "docker://", "crio://")
_HEX_ID = re.compile(r"^[0-9a-f]{12,64}$")


@dataclass(frozen=True)
class ContainerProcess:
    pid: int  # as the host sees it
    ns_pid: int  # as the container sees it (1 for its first process)
    cgroup: str  # the matching cgroup path, or the mountinfo line that matched
    how: str  # "cgroup" or "mountinfo"


def parse_container_id(container_id: str) -> tuple[str, str]:
    """`containerd://abc...` -> ("containerd", "abc..."); a bare id has runtime ""."""
    for prefix in RUNTIME_PREFIXES:
        if container_id.startswith(prefix):
            return prefix[:-3], container_id[len(prefix):]
    return "", container_id


def cgroup_matches(path: str, cid: str) -> bool:
    """Whether a cgroup path's last component names this container (any driver, runtime)."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last == cid:
        return True
    if last.endswith(".scope"):
        stem = last[: -len(".scope")]
        return stem.rsplit("-", 1)[-1] == cid
    return False


def _cgroup_paths(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            # "hierarchy-id:controllers:path" in v1, "0::path" in v2
            return [line.rstrip("\n").split(":", 2)[2] for line in f if line.count(":") >= 2]
    except OSError:
        return []


def _ns_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return pid


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # comm may hold spaces and parentheses: the fields after the last ")" are safe
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def _by_cgroup(cid: str) -> list[ContainerProcess]:
    found = []
    for pid in _pids():
        for path in _cgroup_paths(pid):
            if cgroup_matches(path, cid):
                found.append(ContainerProcess(pid, _ns_pid(pid), path, "cgroup"))
                break
    return found


def _by_mountinfo(cid: str) -> list[ContainerProcess]:
    # containerd and Docker mount /etc/hostname, /etc/hosts and the rootfs from directories
    # named after the container; a process whose mounts name the id is inside it.
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 4 and f"/{cid}/" in fields[3] + "/":
                        found.append(ContainerProcess(pid, _ns_pid(pid), fields[3],
                                                      "mountinfo"))
                        break
        except OSError:
            continue
    return found


def container_processes(container_id: str) -> list[ContainerProcess]:
    """Every process of the container on this node (empty if it is not here)."""
    _, cid = parse_container_id(container_id)
    if not _HEX_ID.match(cid):
        return []
    return _by_cgroup(cid) or _by_mountinfo(cid)


def main_process(processes: list[ContainerProcess]) -> ContainerProcess | None:
    """The container's own process: PID 1 of its namespace, else the one whose parent is
    outside the container (what the runtime started), the oldest first."""
    if not processes:
        return None
    for proc in processes:
        if proc.ns_pid == 1:
            return proc
    inside = {p.pid for p in processes}
    roots = [p for p in processes if _parent(p.pid) not in inside]
    return (roots or processes)[0]


def container_pid(container_id: str) -> tuple[int, str]:
    """The host PID of a container's main process, and how it was found; UserError if the
    container has no process on this machine."""
    from tracer.errors import UserError

    main = main_process(container_processes(container_id))
    if main is None:
        raise UserError(f"container {container_id} has no process on this machine: is the "
                        "agent on the pod's node, in the host's PID namespace?")
    return main.pid, (f"tracing PID {main.pid} (PID {main.ns_pid} in its container), found "
                      f"by its {main.how}: {main.cgroup}")
