"""What one uprobe hit costs, measured at attach on this machine with this run's probes.

The operator cannot be asked to call its function on demand, so the tracer calls a function
of its own: a few instructions on a private executable page (a file on /dev/shm, so no other
process maps it) that load the registers the plan's probes read with pointers to a buffer
(so every fetch reads real memory), run the operator's own entry instruction (`push rbp`,
`sub rsp, N`), clear the error registers (a nil error, the common return) and RET. Two uprobes
with the plan's own entry and return fetch-args go on that instruction and on the RET,
recording into the run's private instance. Bursts of calls with and without them; the
difference per hit is the cost. Minimum of several bursts: interruptions only add time.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile
import time

from tracer.backends.uprobe import tracefs

BURSTS = 5
CALLS = 200  # per burst: 2 hits a call, about 2 ms of probes a burst on this VM

PROLOGUE = bytes.fromhex(
    "4156"          # push r14          (callee-saved: restored below)
    "53"            # push rbx
    "4989fe"        # mov r14, rdi      the goroutine's g (goid at +off)
    "4989f8"        # mov r8, rdi       a string pointer (the name)
    "4889fb"        # mov rbx, rdi
    "4889f8"        # mov rax, rdi
    "be10000000"    # mov esi, 16       string lengths
    "41b910000000"  # mov r9d, 16
    "b910000000"    # mov ecx, 16
)
EPILOGUE = bytes.fromhex(
    "31c9"          # xor ecx, ecx      nil error: itab 0
    "31ff"          # xor edi, edi      and data 0 (its message fetch faults, as in the operator)
    "5b"            # pop rbx
    "415e"          # pop r14
    "31c0"          # xor eax, eax
)
RET = b"\xc3"


def entry_instruction(code: bytes) -> tuple[bytes, bytes]:
    """The operator's entry instruction and its undo, when it is one this page can run
    safely (what Go puts after the stack check); else `push rbp`."""
    if code[:1] == b"\x55":
        return b"\x55", b"\x5d"  # push rbp / pop rbp
    if code[:3] == b"\x48\x83\xec":
        return code[:4], b"\x48\x83\xc4" + code[3:4]  # sub/add rsp, imm8
    if code[:3] == b"\x48\x81\xec":
        return code[:7], b"\x48\x81\xc4" + code[3:7]  # sub/add rsp, imm32
    return b"\x55", b"\x5d"


def measure(root: str, instance: str, group: str, entry_code: bytes, entry_args: str,
            exit_args: str) -> tuple[int | None, str]:
    """(ns per hit, how it was measured). The probes are in the run's group (so any way out
    removes them) and gone when this returns."""
    do, undo = entry_instruction(entry_code)
    code = PROLOGUE + do
    entry_offset = len(PROLOGUE)
    code += undo + EPILOGUE
    ret_offset = len(code)
    code += RET
    names = [f"{group}/cal_entry", f"{group}/cal_ret"]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    address = fd = path = None
    try:
        # A folder mounted noexec refuses the mapping: the next one may not.
        for folder in ("/dev/shm", tempfile.gettempdir()):
            fd, path = tempfile.mkstemp(prefix="tracer-calibrate-", dir=folder)
            os.write(fd, code.ljust(mmap.PAGESIZE, b"\xcc"))
            address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC,
                                mmap.MAP_PRIVATE, fd, 0)
            if address not in (None, ctypes.c_void_p(-1).value):
                break
            address = None
            os.close(fd)
            os.unlink(path)
            fd = path = None
        if address is None:
            return None, "not measured: no folder allows an executable calibration page"
        events = os.path.join(root, "uprobe_events")
        tracefs.write(events, f"p:{names[0]} {path}:0x{entry_offset:x} {entry_args}\n",
                      append=True)
        tracefs.write(events, f"p:{names[1]} {path}:0x{ret_offset:x} {exit_args}\n",
                      append=True)
        call = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p)(address)
        buffer = ctypes.create_string_buffer(b"calibration-name" * 64)
        pointer = ctypes.addressof(buffer)
        tracefs.write(os.path.join(instance, "set_event_pid"), str(os.getpid()))
        enables = [os.path.join(instance, "events", name, "enable") for name in names]

        def burst() -> int:
            t0 = time.perf_counter_ns()
            for _ in range(CALLS):
                call(pointer)
            return time.perf_counter_ns() - t0

        bare, probed = [], []
        for _ in range(BURSTS):
            bare.append(burst())
            for enable in enables:
                tracefs.write(enable, "1")
            probed.append(burst())
            for enable in enables:
                tracefs.write(enable, "0")
        hits = _recorded(instance)
        if hits < BURSTS * CALLS * 2:
            return None, f"not measured: {hits} of {BURSTS * CALLS * 2} calibration hits seen"
        cost = max(0, (min(probed) - min(bare)) // (CALLS * 2))
        return cost, (f"at attach: {BURSTS} bursts of {CALLS} calls through uprobes with this "
                      "run's entry and return fetch-args on a private code page (the "
                      "operator's entry instruction, a RET, a nil error), fastest burst with "
                      "the probes minus fastest without, per hit")
    except OSError as exc:
        return None, f"not measured: {exc.strerror or exc}"
    finally:
        if address is not None:
            libc.munmap(address, mmap.PAGESIZE)
        for name in names:
            try:
                tracefs.write(os.path.join(root, "uprobe_events"), f"-:{name}\n", append=True)
            except OSError:
                pass
        if fd is not None:
            os.close(fd)
            os.unlink(path)
        try:
            tracefs.write(os.path.join(instance, "trace"), "")  # the calibration's records
        except OSError:
            pass


def _recorded(instance: str) -> int:
    """Events the instance holds (the calibration's), counted from its per-CPU stats."""
    total = 0
    folder = os.path.join(instance, "per_cpu")
    for cpu in os.listdir(folder):
        with open(os.path.join(folder, cpu, "stats")) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("entries", "overrun"):
                    total += int(value.split()[0])
    return total
