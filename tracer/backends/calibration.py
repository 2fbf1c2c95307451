"""A calibration function of the tracer's own, for measuring what one hit costs.

The operator cannot be asked to call its function on demand, so the backends time their own
probes on this one: a few instructions on a private executable page that load the registers
the plan's probes read with pointers to a buffer (so every read is of real memory) and call
the probed function, which runs the operator's own entry instruction (`push rbp`, `sub rsp,
N`: the kernel emulates some instructions and single-steps others, so the kind matters),
clears the error registers (a nil error, the common return) and RETs with those registers
still set, as an operator's function does (the goroutine in R14 among them); the caller then
restores what the C convention wants kept. The page holds two copies: one probed, one not.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
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
RET = b"\xc3"
INNER_END = bytes.fromhex(
    "31c9"          # xor ecx, ecx      nil error: itab 0
    "31ff"          # xor edi, edi      and data 0 (its message read faults, as in the operator)
) + RET             # the probed RET: R14, RBX, RAX still as the probes expect
OUTER_END = bytes.fromhex(
    "5b"            # pop rbx
    "415e"          # pop r14
    "31c0"          # xor eax, eax
) + RET
COPY = 0x100  # the unprobed copy's offset in the page
BUFFER = b"calibration-name" * 64  # what the registers point to
HEADERS = len(BUFFER) // 2  # its first half: Go string headers (pointer, 16) into itself


def entry_instruction(code: bytes) -> tuple[bytes, bytes]:
    """The operator's entry instruction and its undo, when it is one this page can run
    safely (what Go puts after the stack check, a push); else an instruction nothing
    emulates (`mov rax, rax`), as the operator's own is then stepped too."""
    if code[:1] == b"\x76" or code[:2] == b"\x0f\x86":
        return b"\x76\x00", b""  # the stack check's jbe, not taken
    if code[:1] and 0x50 <= code[0] <= 0x57:
        return code[:1], bytes([code[0] + 8])  # push reg / pop reg
    if code[:1] == b"\x41" and len(code) > 1 and 0x50 <= code[1] <= 0x57:
        return code[:2], bytes([0x41, code[1] + 8])  # push r8..r15 / pop
    if code[:4] == b"\xf3\x0f\x1e\xfa":
        return code[:4], b""  # endbr64
    if code[:3] == b"\x48\x83\xec":
        return code[:4], b"\x48\x83\xc4" + code[3:4]  # sub/add rsp, imm8
    if code[:3] == b"\x48\x81\xec":
        return code[:7], b"\x48\x81\xc4" + code[3:7]  # sub/add rsp, imm32
    return b"\x48\x89\xc0", b""  # mov rax, rax


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
    call = b"\xe8" + len(OUTER_END).to_bytes(4, "little")  # call the probed function below
    outer = PROLOGUE + call + OUTER_END
    function = outer + do + spin(body) + undo + INNER_END
    entry, ret = len(outer), len(function) - 1
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
        # A string read through a pointer (an object's name at its metadata's offset) must
        # read real memory too: text read as a pointer would fault, a cost the operator's
        # own hits never pay.
        base = ctypes.addressof(self.buffer)
        headers = struct.pack("<QQ", base + HEADERS, 16) * (HEADERS // 16)
        ctypes.memmove(base, headers, len(headers))

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
