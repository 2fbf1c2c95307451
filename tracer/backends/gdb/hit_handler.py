"""gdb's hit handler: runs inside gdb's own Python, does all the work of a breakpoint hit.

It is loaded with `source` into gdb and must use only the standard library and the `gdb`
module (gdb's Python is the system one, not the tracer's virtualenv). Every hit is handled in
`stop()` and written as one JSON line to a pipe the controller reads; there is no round trip
to the controller, which is what keeps a hit near 100 µs instead of a millisecond (MI).

The hit line, the decoders and their values are the contract in tracer/probes/decoders.py,
imported here from the tracer's own source (its package __init__ files are not run: they
import libraries gdb's Python does not have).
"""

import ctypes
import json
import os
import signal
import sys
import time
import types

import gdb  # type: ignore[import-not-found]


def _import_contract(root: str) -> None:
    """tracer.probes.decoders and tracer.binary.govalues from the tracer's source folder
    `root` (the plan names it), as plain modules: the packages' __init__ files are skipped."""
    global decoders, govalues
    for name, folder in (("tracer", root), ("tracer.binary", os.path.join(root, "binary")),
                         ("tracer.probes", os.path.join(root, "probes"))):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [folder]
            sys.modules[name] = package
    from tracer.binary import govalues
    from tracer.probes import decoders


decoders = govalues = None  # set by tracer_arm


PTRACE_GETREGS = 12
REGISTERS = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs "
             "eflags rsp ss fs_base gs_base ds es fs gs").split()


class UserRegs(ctypes.Structure):
    """struct user_regs_struct of x86-64 Linux."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in REGISTERS]


class PtraceRegisters:
    """All registers of the stopped thread in one PTRACE_GETREGS. gdb's Python runs on gdb's
    main thread, which is the ptracer, so the call is allowed; it skips building gdb's frame
    (tens of µs per hit). Read-only: gdb's own view of the thread is untouched."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                     ctypes.c_void_p]
        self.libc.ptrace.restype = ctypes.c_long
        self.regs = UserRegs()

    def read(self, lwp: int):
        if self.libc.ptrace(PTRACE_GETREGS, lwp, None, ctypes.byref(self.regs)) != 0:
            raise OSError(ctypes.get_errno(), "PTRACE_GETREGS failed")
        regs = self.regs
        return lambda name: getattr(regs, name)


def frame_registers():
    """gdb's own way, the fallback: slower, but needs nothing beyond the gdb module."""
    frame = gdb.newest_frame()
    return lambda name: int(frame.read_register(name))


PTRACE_SETREGS = 13
MASK64 = (1 << 64) - 1
FLAGS_ARITH = 0x8D5  # CF PF AF ZF SF OF


PUSHED = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]


def instruction_kind(code: bytes) -> tuple | None:
    """The instructions at Go's breakpoints that the agent can carry out itself, so gdb need
    not step over the breakpoint (a second stop): (kind, length, operand)."""
    if 0x50 <= code[0] <= 0x57:  # push rax..rdi (rbp: Go's frame, and most C prologues)
        return ("push", 1, PUSHED[code[0] - 0x50])
    if code[0] == 0x41 and len(code) > 1 and 0x50 <= code[1] <= 0x57:  # push r8..r15
        return ("push", 2, PUSHED[8 + code[1] - 0x50])
    if code[:1] == b"\xc3":
        return ("ret", 1, 0)
    if code[:3] == b"\x48\x83\xec":  # sub rsp, imm8 (sign-extended)
        return ("sub_rsp", 4, int.from_bytes(code[3:4], "little", signed=True) & MASK64)
    if code[:3] == b"\x48\x81\xec":  # sub rsp, imm32 (sign-extended)
        return ("sub_rsp", 7, int.from_bytes(code[3:7], "little", signed=True) & MASK64)
    return None


def sub_flags(eflags: int, a: int, b: int) -> tuple[int, int]:
    """(a - b, eflags) as the CPU's SUB leaves them."""
    r = (a - b) & MASK64
    flags = eflags & ~FLAGS_ARITH
    flags |= 0x1 if a < b else 0  # CF
    flags |= 0x4 if bin(r & 0xFF).count("1") % 2 == 0 else 0  # PF
    flags |= 0x10 if (a ^ b ^ r) & 0x10 else 0  # AF
    flags |= 0x40 if r == 0 else 0  # ZF
    flags |= 0x80 if r >> 63 else 0  # SF
    flags |= 0x800 if ((a ^ b) & (a ^ r)) >> 63 else 0  # OF
    return r, flags


class Agent:
    def __init__(self, plan: dict) -> None:
        self.fd: int = plan["out_fd"]
        self.points: list[dict] = plan["points"]
        go = plan.get("go") or {}
        self.goid_offset: int | None = go.get("goid_offset")
        self.types_base: int | None = go.get("types_base")
        self.capture_args: bool = plan.get("capture_args", True)
        self.bias: int = plan.get("bias", 0)
        self.breakpoints: list[gdb.Breakpoint] = []
        self.broken = False
        self.errors = 0
        self.hits = 0
        self.dropped = 0
        # Rust futures: addresses being polled, per thread; parsed rust-poll decoders.
        self.polling: dict[int, list[int]] = {}
        self.rust_specs: dict[str, tuple] = {}
        self.current_future: int | None = None
        self.current_function = ""
        self.rust_requests: dict[str, dict] = plan.get("rust_requests") or {}
        self.rust_results: dict[str, dict] = plan.get("rust_results") or {}
        self.mem = govalues.GoMemory(self.read, self.types_base, self.goid_offset)
        self.mem.capture_args = self.capture_args
        os.set_blocking(self.fd, False)
        self.ptrace: PtraceRegisters | None = None
        self.mem_fd: int | None = None
        try:
            self.ptrace = PtraceRegisters() if plan.get("registers") != "frame" else None
        except Exception:
            self.ptrace = None
        try:
            self.mem_fd = os.open(f"/proc/{gdb.selected_inferior().pid}/mem", os.O_RDONLY)
        except OSError:
            self.mem_fd = None
        # One stop per hit: the agent carries out the instruction under the breakpoint
        # (registers and stack through ptrace and /proc/PID/mem) and flushes gdb's register
        # cache, so gdb resumes past it instead of stepping over the breakpoint.
        self.one_stop = plan.get("one_stop", False) and self.ptrace is not None
        self.kinds: list[tuple | None] = []
        self.fresh_lwp: int | None = None  # registers read by this hit, for that thread
        self.mem_rw: int | None = None
        self.emulated = 0

    # -- output ---------------------------------------------------------------------------
    def emit(self, line: str, must: bool = False) -> None:
        """Write one line. A hit never waits: if the pipe is full (the tracer is slow or
        stuck), the line is dropped and counted, since a blocked stop() would keep the
        operator's thread stopped. Markers (`must`) are written once the operator is stopped
        and may wait for the reader."""
        if self.broken:
            return
        data = line.encode() + b"\n"
        deadline = time.monotonic() + 5
        while True:
            try:
                os.write(self.fd, data)
                return
            except BlockingIOError:
                if not must or time.monotonic() > deadline:
                    self.dropped += 1
                    return
                time.sleep(0.001)
            except OSError:
                # The controller is gone: stop costing the operator anything. gdb detaches
                # when its stdin reaches EOF; until then the breakpoints must not fire.
                self.broken = True
                gdb.post_event(self.disable_all)
                return

    def disable_all(self) -> None:
        for bp in self.breakpoints:
            try:
                bp.enabled = False
            except Exception:
                pass

    # -- arming -----------------------------------------------------------------------------
    def arm(self) -> int:
        if self.one_stop:
            # Read before the breakpoints exist: in non-stop mode gdb inserts them at once.
            try:
                self.mem_rw = os.open(f"/proc/{gdb.selected_inferior().pid}/mem", os.O_RDWR)
                self.kinds = [instruction_kind(self.read(p["addr"] + self.bias, 8))
                              for p in self.points]
            except Exception:
                self.one_stop = False
        for index, point in enumerate(self.points):
            self.breakpoints.append(HitBreakpoint(self, index, point["addr"] + self.bias))
        return len(self.breakpoints)

    def carry_out(self, index: int) -> None:
        """Do the breakpoint's instruction for the stopped thread (see one_stop). Any failure
        before gdb's cache is flushed leaves the thread as it was: gdb then steps as usual."""
        lwp, self.fresh_lwp = self.fresh_lwp, None
        kind = self.kinds[index] if index < len(self.kinds) else None
        if kind is None or lwp is None or self.ptrace is None:
            return
        regs = self.ptrace.regs
        before = UserRegs.from_buffer_copy(regs)
        name, length, operand = kind
        if name == "push":
            value = getattr(regs, operand)  # push rsp pushes its value from before
            regs.rsp = (regs.rsp - 8) & MASK64
            os.pwrite(self.mem_rw, value.to_bytes(8, "little"), regs.rsp)
            regs.rip += length
        elif name == "ret":
            regs.rip = int.from_bytes(self.read(regs.rsp, 8), "little")
            regs.rsp += 8
        else:
            regs.rsp, regs.eflags = sub_flags(regs.eflags, regs.rsp, operand)
            regs.rip += length
        libc = self.ptrace.libc
        if libc.ptrace(PTRACE_SETREGS, lwp, None, ctypes.byref(regs)) != 0:
            return
        try:
            gdb.execute("maint flush register-cache", to_string=True)
        except Exception:
            # gdb would step the instruction again from its old view: put the thread back.
            libc.ptrace(PTRACE_SETREGS, lwp, None, ctypes.byref(before))
            self.one_stop = False
            raise
        self.emulated += 1

    def disarm(self) -> int:
        removed = 0
        for bp in self.breakpoints:
            try:
                bp.delete()
                removed += 1
            except Exception:
                pass
        self.breakpoints.clear()
        return removed

    # -- decoding ---------------------------------------------------------------------------
    def read(self, addr: int, size: int) -> bytes:
        if self.mem_fd is not None:
            try:
                data = os.pread(self.mem_fd, size, addr)
                if len(data) == size:
                    return data
            except OSError:
                pass
        return gdb.selected_inferior().read_memory(addr, size).tobytes()

    def u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def string(self, ptr: int, length: int, limit: int) -> str | None:
        return self.mem.string(ptr, length, limit)

    def decode(self, reg, decoder: str):
        if decoder.startswith(decoders.RUST_DROP):
            return decoders.drop_state(decoder, self.read, self.current_future)
        if decoder.startswith("rust-poll"):
            return self.rust_poll(reg, decoder)
        return decoders.decode(decoder, reg, self.mem)

    # -- Rust futures (see tracer/probes/rust_async.py) -------------------------------------
    def future(self, reg, point: dict, lwp: int) -> int | None:
        """The future's address, the key of its polls: `self` of poll(self: Pin<&mut Self>,
        cx) is RSI (RDI is the slot of the returned Poll), `self` of drop_in_place is RDI. At a
        poll's RET both are gone: the address was kept per thread at the poll's entry (a
        thread runs one poll of a given future at a time; nesting is LIFO)."""
        stack = self.polling.setdefault(lwp, [])
        role = point["role"]
        self.current_function = point["function"]
        if role == "poll":
            # rust-poll-rdi: the Poll comes back in registers, so `self` is the first argument.
            rdi = (point.get("decode") or "").startswith("rust-poll-rdi")
            address = int(reg("rdi" if rdi else "rsi"))
            stack.append(address)
            del stack[:-16]  # polls that unwound (a panic) never reach their RET
        elif role == "poll-exit":
            address = stack.pop() if stack else None
        else:
            address = int(reg("rdi"))
        self.current_future = address
        return address

    def rust_poll(self, reg, decoder: str):
        """rust-poll:OFF:SIZE at entry -> the future's state; rust-poll-exit:OFF:SIZE:N:MODE at
        RET -> [state, the first N bytes of the returned Poll, hex]; MODE m: RAX points at it
        (returned through memory), r: it is RAX:RDX. OFF "-" when the layout is unknown."""
        spec = self.rust_specs.get(decoder)
        if spec is None:
            parts = decoder.split(":")[1:]
            parts += ["-", "-", "0", "r"][len(parts):]
            spec = (None if parts[0] == "-" else int(parts[0]),
                    None if parts[1] == "-" else int(parts[1]), int(parts[2]), parts[3])
            self.rust_specs[decoder] = spec
        offset, size, nbytes, mode = spec
        future = self.current_future
        state = None
        if future and offset is not None:
            state = int.from_bytes(self.read(future + offset, size), "little")
        if not decoder.startswith("rust-poll-exit"):
            recipe = self.rust_requests.get(self.current_function)
            if state == 0 and recipe and self.capture_args:
                # A first poll: the future still holds its arguments, the object among them.
                return [state, self.rust_string(future, recipe["namespace"]),
                        self.rust_string(future, recipe["name"])]
            return state
        raw = None
        if nbytes:
            if mode == "m":
                raw = self.read(int(reg("rax")), nbytes)
            else:
                raw = (int(reg("rax")).to_bytes(8, "little")
                       + int(reg("rdx")).to_bytes(8, "little"))[:nbytes]
        message = None
        layout = self.rust_results.get(self.current_function)
        if raw is not None and mode == "m" and layout and layout.get("messages") \
                and self.capture_args:
            message = self.rust_error_message(layout, raw, int(reg("rax")))
        return [state, None if raw is None else raw.hex(), message]

    @staticmethod
    def rust_variant(enum: dict, data: bytes) -> str | None:
        raw = data[enum["off"]:enum["off"] + enum["size"]]
        if len(raw) < enum["size"]:
            return None
        return enum["values"].get(str(int.from_bytes(raw, "little")), enum["default"])

    def rust_error_message(self, layout: dict, data: bytes, slot: int) -> str | None:
        """A Ready(Err(e)): e's first string field, like a Go error's message."""
        if self.rust_variant(layout["poll"], data) != layout["ready"] \
                or self.rust_variant(layout["result"], data) != "Err":
            return None
        variant = self.rust_variant(layout["error"], data) if layout["error"] else ""
        where = layout["messages"].get(variant or "")
        if where is None:
            return None
        return self.string(self.u64(slot + where[0]), self.u64(slot + where[1]),
                           govalues.MAX_MESSAGE)

    def rust_string(self, addr: int, steps: list) -> str | None:
        """Follow a request_layout path from the future to a string (None: an Option that
        is None, or a pointer that is null)."""
        for step in steps:
            if step[0] == "o":
                addr += step[1]
            elif step[0] == "d":
                addr = self.u64(addr)
                if not addr:
                    return None
            else:
                _kind, ptr, length, option = step
                if option is not None:
                    tag = int.from_bytes(self.read(addr + option["off"], option["size"]),
                                         "little")
                    if option["values"].get(str(tag), option["default"]) != "Some":
                        return None
                return self.string(self.u64(addr + ptr), self.u64(addr + length), govalues.MAX_NAME)
        return None

    def goid(self, reg, key: str) -> int | None:
        if key == "goid":
            g = reg("r14")
        elif key == "goid-rax":  # runtime.recovery(gp *g): the panicking g is the argument
            g = reg("rax")
        else:
            return None
        if not g or self.goid_offset is None:
            return None
        return self.u64(g + self.goid_offset)

    def hit(self, index: int) -> None:
        ts = time.monotonic_ns()
        self.hits += 1
        point = self.points[index]
        lwp = gdb.selected_thread().ptid[1]
        reg = None
        self.fresh_lwp = None
        if self.ptrace is not None:
            try:
                reg = self.ptrace.read(lwp)
                self.fresh_lwp = lwp
            except OSError:
                self.ptrace = None  # not the ptracer after all: gdb's way from now on
        if reg is None:
            reg = frame_registers()
        if point["key"] == "future":
            goid = self.future(reg, point, lwp)
        else:
            goid = self.goid(reg, point["key"])
        sp = reg("rsp")
        value = None
        if point["decode"]:
            # The timing is worth keeping even when the values cannot be read.
            try:
                value = self.decode(reg, point["decode"])
            except Exception as exc:  # noqa: BLE001
                self.report_error(exc, index)
        handler = time.monotonic_ns() - ts
        self.emit(json.dumps([ts, index, lwp, goid, sp, value, handler], separators=(",", ":")))

    def report_error(self, exc: Exception, index: int) -> None:
        self.errors += 1
        if self.errors <= 20:
            self.emit(json.dumps({"agent_error": repr(exc), "point": index}))


class HitBreakpoint(gdb.Breakpoint):
    def __init__(self, agent: Agent, index: int, addr: int) -> None:
        super().__init__(f"*0x{addr:x}", internal=True)
        self.silent = True
        self.agent = agent
        self.index = index

    def stop(self) -> bool:
        # An exception escaping stop() would leave the operator stopped: never let one out.
        try:
            self.agent.hit(self.index)
            if self.agent.one_stop:
                self.agent.carry_out(self.index)
        except Exception as exc:  # noqa: BLE001
            try:
                self.agent.report_error(exc, self.index)
            except Exception:  # noqa: BLE001
                pass
        return False


_agent: Agent | None = None


def tracer_arm(plan_path: str) -> None:
    global _agent
    with open(plan_path) as f:
        plan = json.load(f)
    _import_contract(plan["tracer_root"])
    _agent = Agent(plan)
    count = _agent.arm()
    print(f"tracer-armed {count}")


def tracer_marker(n: int) -> None:
    """Written in order after every hit so far: the controller knows the pipe is drained."""
    if _agent is not None:
        _agent.emit(json.dumps({"marker": n, "hits": _agent.hits, "errors": _agent.errors,
                                "dropped": _agent.dropped}), must=True)


def tracer_capture(on: bool) -> None:
    """Turn the optional decoding (names, messages) on or off while running."""
    if _agent is not None:
        _agent.capture_args = on
        _agent.mem.capture_args = on
    print(f"tracer-capture {int(on)}")


def tracer_disarm() -> None:
    removed = _agent.disarm() if _agent is not None else 0
    print(f"tracer-disarmed {removed}")


# gdb may not ignore SIGPIPE; a write to a closed pipe must not kill gdb, whose death would
# leave int3 bytes in the operator.
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
