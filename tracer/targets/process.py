"""A local process as a target: checks before attaching, load bias, memory reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from elftools.elf.elffile import ELFFile

from tracer.errors import UserError


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str
    exe: str  # /proc/PID/exe: readable even across mount namespaces
    exe_target: str  # what the link points at, for messages
    tracer_pid: int


def ptrace_refused(pid: int) -> UserError:
    """What to do when the kernel will not let this tracer ptrace the process."""
    return UserError(
        f"no permission to trace process {pid} (ptrace refused): run as root or as its user "
        "with kernel.yama.ptrace_scope=0, or give the container CAP_SYS_PTRACE")


def status_field(pid: int, key: str) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def tracer_pid(pid: int) -> int:
    """The process tracing `pid`, 0 if none. The kernel names the tracing thread, which may
    be any thread of a multi-threaded debugger (Delve's: 1 of 40 attaches): its Tgid is the
    process."""
    value = status_field(pid, "TracerPid")
    thread = int(value) if value else 0
    if not thread:
        return 0
    group = status_field(thread, "Tgid")
    return int(group) if group else thread


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def inspect_process(pid: int) -> ProcessInfo:
    if pid <= 0:
        raise UserError(f"{pid} is not a process id: give the PID of a running process")
    if not os.path.exists(f"/proc/{pid}"):
        raise UserError(f"no process with PID {pid}: check the PID with `ps` (is it running?)")
    if pid == os.getpid():
        raise UserError("the tracer cannot trace itself: give the operator's PID")
    state = status_field(pid, "State") or ""
    if state.startswith("Z"):
        raise UserError(f"process {pid} has exited (zombie): nothing to trace")
    if state.startswith("T"):
        # gdb resumes a stopped process when it attaches: that would change the operator.
        raise UserError(f"process {pid} is stopped (state T); attaching would resume it: "
                        f"continue it first (kill -CONT {pid}) if that is what you want")
    exe = f"/proc/{pid}/exe"
    try:
        target = os.readlink(exe)
        with open(exe, "rb"):
            pass
    except PermissionError:
        raise UserError(
            f"no permission to trace process {pid}: run the tracer as the process's user "
            "with ptrace allowed, or as root"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read the executable of process {pid}: {exc.strerror}") from None
    try:
        # The code check at detach reads the operator's memory here. ptrace alone does not
        # open it: /proc/PID/mem is mode 0600 and the operator's, so a root without
        # CAP_DAC_OVERRIDE (a container that drops ALL and adds back SYS_PTRACE) could attach
        # and then neither see breakpoints hit nor prove the code restored.
        with open(f"/proc/{pid}/mem", "rb"):
            pass
    except PermissionError:
        owner = os.stat(f"/proc/{pid}").st_uid
        if os.geteuid() == 0 and owner != 0:
            raise UserError(
                f"no permission to read the memory of process {pid} (/proc/{pid}/mem, uid "
                f"{owner}'s): root needs CAP_DAC_OVERRIDE for it (a container that drops ALL "
                "capabilities must add back DAC_OVERRIDE beside SYS_PTRACE)") from None
        # The same check as ptrace's attach (Yama's ptrace_scope among it).
        raise ptrace_refused(pid) from None
    except OSError:
        pass  # gone meanwhile: the next step says so
    name = process_name(pid)
    other = tracer_pid(pid)
    if other:
        raise UserError(
            f"process {pid} ({name}) is already traced by PID {other} ({process_name(other)}): "
            "a process can have one tracer; stop that one first"
        )
    return ProcessInfo(pid, name, exe, target, other)


@lru_cache(maxsize=8)
def _load_segments(path: str) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """(lowest PT_LOAD vaddr, ((vaddr, offset, filesz), ...)) of an ELF file."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        lowest = min(s["p_vaddr"] & ~0xFFF for s in loads)
        return lowest, tuple((s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in loads)


def mapped_at(pid: int, path: str) -> int | None:
    """Where the process maps the start of the file `path` (its first page); None if not
    (yet: an exec switches /proc/PID/exe before the kernel maps the program)."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == path and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    return None


def load_bias(pid: int, exe_path: str, pie: bool) -> int:
    """Where the kernel put the executable: 0 for a fixed-address binary."""
    if not pie:
        return 0
    target = os.readlink(f"/proc/{pid}/exe")
    start = mapped_at(pid, target)
    if start is None:
        raise UserError(f"cannot find where {target} is mapped in process {pid}")
    lowest, _ = _load_segments(exe_path)
    return start - lowest


def file_bytes(path: str, vaddr: int, size: int) -> bytes:
    """Bytes of the file at a static virtual address."""
    _, segments = _load_segments(path)
    for seg_vaddr, offset, filesz in segments:
        if seg_vaddr <= vaddr and vaddr + size <= seg_vaddr + filesz:
            with open(path, "rb") as f:
                f.seek(offset + vaddr - seg_vaddr)
                return f.read(size)
    raise ValueError(f"address 0x{vaddr:x} is not in a loaded segment of {path}")


def read_memory(pid: int, addr: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        f.seek(addr)
        return f.read(size)


def altered_code(pid: int, exe_path: str, addresses: list[int], bias: int) -> list[int]:
    """Static addresses whose byte in the process differs from the file's: a breakpoint left
    behind would kill the operator on its next call, so the tracer checks after detaching."""
    bad = []
    for addr in addresses:
        if read_memory(pid, addr + bias, 1) != file_bytes(exe_path, addr, 1):
            bad.append(addr)
    return bad


def restore_code(pid: int, exe_path: str, addresses: list[int], bias: int) -> list[int]:
    """Write the file's bytes back where a dead debugger left breakpoints; returns the
    addresses still altered afterwards. Used only when gdb died without detaching."""
    for addr in altered_code(pid, exe_path, addresses, bias):
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as f:
            f.seek(addr + bias)
            f.write(file_bytes(exe_path, addr, 1))
    return altered_code(pid, exe_path, addresses, bias)
