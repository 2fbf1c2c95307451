"""The kernel's tracefs: where it is mounted, a private instance, uprobe definitions."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import tempfile
import time

from tracer.errors import UserError

GROUP_PREFIX = "tracer_"
STANDARD = "/sys/kernel/tracing"


def mount_point() -> str:
    """The tracefs mount, mounting one in a private folder when none is (needs root)."""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs":
                return parts[1]
    if os.geteuid() != 0:
        raise UserError("--backend uprobe needs root (kernel uprobes through tracefs): run as "
                        "root or use --backend gdb")
    # Where the kernel's tools expect it, else a private folder.
    folder = STANDARD if os.path.isdir(STANDARD) else tempfile.mkdtemp(prefix="tracer-tracefs-")
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", folder], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise UserError(f"cannot mount tracefs ({result.stderr.strip()}): use --backend gdb")
    return folder


def write(path: str, text: str, append: bool = False) -> None:
    """One write(2): tracefs files refuse the seek Python's append mode does on open."""
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def remove_stale(root: str) -> None:
    """Probes of tracers whose operator is gone (a tracer killed before it cleaned up)."""
    events = os.path.join(root, "uprobe_events")
    with open(events) as f:
        lines = f.read().splitlines()
    for line in lines:
        match = re.match(rf"p:({GROUP_PREFIX}(\d+))/(\w+) ", line)
        if match and not os.path.exists(f"/proc/{match.group(2)}"):
            _remove_group(root, match.group(1))
    # An instance whose probes are gone already (its tracer died between the two).
    folder = os.path.join(root, "instances")
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = re.fullmatch(rf"{GROUP_PREFIX}(\d+)", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _remove_group(root, name)


def _remove_group(root: str, group: str) -> None:
    instance = os.path.join(root, "instances", group)
    if os.path.isdir(instance):
        try:
            write(os.path.join(instance, "events", group, "enable"), "0")
        except OSError:
            pass
    # The kernel takes a probe's int3 out of the operator when the probe is removed. Removal
    # can be refused for a moment (EBUSY) just after the event was disabled: retried, since a
    # probe left behind keeps its int3 (seen once here on a real operator's RET).
    deadline = time.monotonic() + 2
    while True:
        with open(os.path.join(root, "uprobe_events")) as f:
            names = [m.group(1) for m in re.finditer(rf"p:({group}/\w+) ", f.read())]
        busy = False
        for name in names:
            try:
                write(os.path.join(root, "uprobe_events"), f"-:{name}\n", append=True)
            except OSError as exc:
                busy = busy or exc.errno == errno.EBUSY
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if os.path.isdir(instance):
        try:
            os.rmdir(instance)
        except OSError:
            pass
