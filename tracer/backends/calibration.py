"""A calibration function of the tracer's own, for measuring what one hit costs.

The operator cannot be asked to call its function on demand, so the backends time their own
probes on this one: a few instructions on a private executable page that load the registers
the plan's probes read with pointers to a buffer (so every read is of real memory), run the
operator's own entry instruction (`push rbp`, `sub rsp, N`: the kernel emulates some
instructions and single-steps others, so the kind matters), clear the error registers (a
nil error, the common return) and RET. The page holds two copies: one probed, one not.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile

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
    "31ff"          # xor edi, edi      and data 0 (its message read faults, as in the operator)
    "5b"            # pop rbx
    "415e"          # pop r14
    "31c0"          # xor eax, eax
)
RET = b"\xc3"
COPY = 0x100  # the unprobed copy's offset in the page
BUFFER = b"calibration-name" * 64  # what the registers point to


def entry_instruction(code: bytes) -> tuple[bytes, bytes]:
    """The operator's entry instruction and its undo, when it is one this page can run
    safely (what Go puts after the stack check); else `push rbp`."""
    if code[:1] == b"\x76" or code[:2] == b"\x0f\x86":
        return b"\x76\x00", b""  # the stack check's jbe, not taken
    if code[:1] == b"\x55":
        return b"\x55", b"\x5d"  # push rbp / pop rbp
    if code[:3] == b"\x48\x83\xec":
        return code[:4], b"\x48\x83\xc4" + code[3:4]  # sub/add rsp, imm8
    if code[:3] == b"\x48\x81\xec":
        return code[:7], b"\x48\x81\xc4" + code[3:7]  # sub/add rsp, imm32
    return b"\x55", b"\x5d"


def spin(iterations: int) -> bytes:
    """mov ecx, N; dec ecx; jnz back: a call's body, so hits come apart as in a real call
    (a debugger finishes part of a hit's work after resuming the thread: only back-to-back
    hits would wait for it)."""
    if iterations <= 0:
        return b""
    return b"\xb9" + iterations.to_bytes(4, "little") + b"\xff\xc9\x75\xfc"


def page(entry_code: bytes, body: int = 0) -> tuple[bytes, int, int]:
    """(the page's bytes, entry probe offset, RET probe offset) of the probed copy; `body`:
    spin iterations between the entry and the return."""
    do, undo = entry_instruction(entry_code)
    function = PROLOGUE + do + spin(body) + undo + EPILOGUE + RET
    entry, ret = len(PROLOGUE), len(function) - 1
    data = function.ljust(COPY, b"\xcc") + function
    return data.ljust(mmap.PAGESIZE, b"\xcc"), entry, ret


class MappedPage:
    """The page in a file (so the kernel's uprobes can name it) mapped executable here."""

    def __init__(self, data: bytes) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mmap.restype = ctypes.c_void_p
        self.libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_int, ctypes.c_long]
        self.libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.address: int | None = None
        self.path: str | None = None
        # A folder mounted noexec refuses the mapping: the next one may not.
        for folder in ("/dev/shm", tempfile.gettempdir()):
            fd, path = tempfile.mkstemp(prefix="tracer-calibrate-", dir=folder)
            try:
                os.write(fd, data)
                address = self.libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC,
                                         mmap.MAP_PRIVATE, fd, 0)
            finally:
                os.close(fd)
            if address not in (None, ctypes.c_void_p(-1).value):
                self.address, self.path = address, path
                break
            os.unlink(path)
        self.buffer = ctypes.create_string_buffer(BUFFER)

    def forget_path(self) -> None:
        """Unlink the file: the mapping (and any uprobe already set on it) keeps it alive
        until the page is unmapped, and nothing is left behind if the process is killed."""
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None

    def function(self, offset: int):
        assert self.address is not None
        call = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p)(self.address + offset)
        pointer = ctypes.addressof(self.buffer)
        return lambda: call(pointer)

    def close(self) -> None:
        if self.address is not None:
            self.libc.munmap(self.address, mmap.PAGESIZE)
            self.address = None
        self.forget_path()
