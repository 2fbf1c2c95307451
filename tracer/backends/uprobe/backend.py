"""Kernel uprobes as a backend: the plan's entry and RET addresses as uprobes with
fetch-args, recorded by the kernel on a private trace instance. Nothing stops the operator
beyond the kernel's own handler, and killing the tracer harms nothing: the probes stay
until the next run removes them (or the operator exits).
"""

from __future__ import annotations

import json
import os
import re
import select
import threading
import time
from collections.abc import Callable

from tracer.backends.uprobe import tracefs
from tracer.binary import gotypes
from tracer.binary.model import BinaryInfo
from tracer.errors import UserError
from tracer.probes.plan import ENTRY, KEY_FUTURE, KEY_GOID, KEY_GOID_FROM_ARG, Plan, Point

NAME_BYTES = 64  # one u8 array; a namespace fits (63), a name takes up to 4
NAME_ARRAYS = 4
MESSAGE_ARRAYS = 4  # messages are kept to 256 bytes here (the gdb agent keeps 1,024)

LINE = re.compile(r"^\s*.*-(\d+)\s+\[\d+\]\s+\S+\s+(\d+)\.(\d+): (\w+): \(0x[0-9a-f]+\)(.*)$")
FIELD = re.compile(r"(\w+)=(\{[^}]*\}|\S+)")


def check_uprobe(info: BinaryInfo) -> str:
    if os.geteuid() != 0:
        raise UserError("--backend uprobe needs root (kernel uprobes through tracefs): run as "
                        "root or use --backend gdb")
    tracefs.mount_point()
    return "uprobe: kernel uprobes on a private trace instance, timestamps in µs"


def _fetchargs(point: Point, goid_offset: int | None) -> str:
    args = ["sp=%sp:u64"]
    if point.key == KEY_GOID and goid_offset is not None:
        args.append(f"goid=+{goid_offset}(%r14):s64")
    elif point.key == KEY_GOID_FROM_ARG and goid_offset is not None:
        args.append(f"goid=+{goid_offset}(%ax):s64")
    if point.decode == "cr-request":
        args += ["nsl=%si:s64", f"ns0=+0(%di):u64[{NAME_BYTES // 8}]", "nml=%r9:s64"]
        args += _arrays("nm", "%r8")
    elif point.decode == "cr-result":
        args += ["rq=%ax:u8", "ra=%bx:s64", "itab=%cx:u64", "eml=+8(%di):s64"]
        args += _arrays("em", "+0(%di)")
    elif point.decode == "go-panic":
        args += ["pt=%ax:u64", "pml=+8(%bx):s64"]
        args += _arrays("pm", "+0(%bx)")
    elif point.decode in ("go-key", "go-key-ctx"):
        ptr, length = ("%bx", "%cx") if point.decode == "go-key" else ("%di", "%si")
        args += [f"kl={length}:s64", *_arrays("k", ptr)]
    elif point.decode == "go-error":
        args += ["itab=%ax:u64", "eml=+8(%bx):s64", *_arrays("em", "+0(%bx)")]
    elif point.decode in ("go-duration", "go-duration-arg"):
        args.append("dur=%ax:s64" if point.decode == "go-duration" else "dur=%bx:s64")
    elif point.decode == "native-args":
        args += ["a0=%di:s64", "a1=%si:s64"]
    elif point.decode == "native-return":
        args += ["ret=%ax:s64"]
    return " ".join(args)


def _arrays(name: str, pointer: str) -> list[str]:
    """A string's bytes as u8 arrays (the kernel's largest is 64 elements)."""
    # u64 elements: the kernel fetches an array element by element, and eight 8-byte reads
    # cost far less than 64 one-byte ones.
    return [f"{name}{i}=+{i * NAME_BYTES}({pointer}):u64[{NAME_BYTES // 8}]"
            for i in range(NAME_ARRAYS)]


def _joined(fields: dict[str, str], name: str, length: str) -> str:
    data = b"".join(_bytes(fields[key]) for i in range(NAME_ARRAYS)
                    if (key := f"{name}{i}") in fields)
    return data[: max(0, int(length))].decode("utf-8", "replace")


def _bytes(text: str) -> bytes:
    """The bytes of a printed u64 array, `{7308626346926468974,...}`, in memory order."""
    return b"".join(int(x).to_bytes(8, "little") for x in text.strip("{}").split(",") if x)


class UprobeBackend:
    name = "uprobe"
    stops_to_attach = False

    def __init__(self) -> None:
        self.root = tracefs.mount_point()
        tracefs.remove_stale(self.root)
        self.hits_fd, self._w = os.pipe()
        self.attached = False
        self.exited: dict | None = None
        self.pid: int | None = None
        self.binary: str | None = None
        self.group = ""
        self.instance = ""
        self.events: list[str] = []
        self.points: list[Point] = []
        self.plan: Plan | None = None
        self._stop = threading.Event()
        self._drained = threading.Event()
        self._reader: threading.Thread | None = None
        self._marker = 0
        self._types: dict[int, tuple[str, int | None]] = {}
        self._mem: int | None = None
        self.capture = True

    # -- start-up ---------------------------------------------------------------------------
    def start(self, binary: str | None) -> None:
        self.binary = binary

    def attach(self, pid: int) -> None:
        if not os.path.exists(f"/proc/{pid}"):
            raise UserError(f"no process with PID {pid}")
        self.pid = pid
        self.binary = f"/proc/{pid}/exe"
        self.group = f"{tracefs.GROUP_PREFIX}{pid}"
        self.attached = True

    def attach_before_exec(self, pid: int, release: Callable[[], None]) -> float:
        raise UserError("tracer run --backend uprobe is not supported yet: start the program, "
                        "then tracer attach PID --backend uprobe")

    def arm(self, plan: Plan, bias: int) -> int:
        from tracer.binary.analyze import analyze

        assert self.pid is not None
        if any(p.key == KEY_FUTURE for p in plan.points):
            # A poll's RET has lost the future's address; gdb's agent keeps it per thread.
            raise UserError("Rust async spans (probe kind \"rust-async\") need --backend gdb: "
                            "kernel uprobes cannot follow a future from a poll to its return")
        self.plan = plan
        info = analyze(self.binary)
        self._mem = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
        exe = os.path.realpath(f"/proc/{self.pid}/exe")
        definitions = []
        for index, point in enumerate(plan.points):
            offset = info.file_offset(point.addr)
            event = f"p{index}"
            definitions.append(f"p:{self.group}/{event} {exe}:0x{offset:x} "
                               f"{_fetchargs(point, plan.go_goid_offset)}")
            self.events.append(event)
        self.points = plan.points
        self._remove()  # a run on this PID killed before it cleaned up
        try:
            for line in definitions:
                tracefs.write(os.path.join(self.root, "uprobe_events"), line + "\n",
                              append=True)
            self.instance = os.path.join(self.root, "instances", self.group)
            os.makedirs(self.instance, exist_ok=True)
            tracefs.write(os.path.join(self.instance, "trace_clock"), "mono")
            tracefs.write(os.path.join(self.instance, "buffer_size_kb"), "8192")
            tasks = " ".join(os.listdir(f"/proc/{self.pid}/task"))
            tracefs.write(os.path.join(self.instance, "options", "event-fork"), "1")
            tracefs.write(os.path.join(self.instance, "set_event_pid"), tasks)
        except OSError as exc:
            self._remove()
            raise UserError(f"the kernel refused the uprobes ({exc.strerror}): use "
                            "--backend gdb") from None
        self._reader = threading.Thread(target=self._read, name="tracer-uprobe", daemon=True)
        self._reader.start()
        # Recording starts now, before the header is written: the operator never stopped,
        # so a call made from here on must not be missed.
        tracefs.write(os.path.join(self.instance, "events", self.group, "enable"), "1")
        return len(definitions)

    def resume(self) -> None:
        """Nothing was stopped, and recording started when armed."""

    # -- hits -------------------------------------------------------------------------------
    def _read(self) -> None:
        fd = os.open(os.path.join(self.instance, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        out = os.fdopen(self._w, "wb", buffering=0)
        buffer = b""
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.05)
                chunk = b""
                if ready:
                    try:
                        chunk = os.read(fd, 1 << 20)
                    except BlockingIOError:
                        chunk = b""
                if chunk:
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    data = b"".join(self._convert(line) for line in lines)
                    if data:
                        out.write(data)
                    continue
                if self._stop.is_set():
                    self._drained.set()
                    if self._marker_wanted:
                        out.write(json.dumps({"marker": self._marker}).encode() + b"\n")
                        self._marker_wanted = False
                    if self._closing:
                        return
                    self._stop.clear()
        finally:
            os.close(fd)
            out.close()

    _marker_wanted = False
    _closing = False

    def _convert(self, raw: bytes) -> bytes:
        match = LINE.match(raw.decode("utf-8", "replace"))
        if not match:
            return b""
        tid, secs, usecs, event, rest = match.groups()
        index = int(event[1:])
        point = self.points[index]
        fields = dict(FIELD.findall(rest))
        ts = int(secs) * 1_000_000_000 + int(usecs.ljust(6, "0")[:6]) * 1000
        if point.role != ENTRY:
            # The kernel prints microseconds: an entry is at or after its floor, an end at or
            # before its ceiling. Spans must contain the call, so ends take the ceiling.
            ts += 999
        goid = int(fields["goid"]) if "goid" in fields else None
        value = self._value(point, fields)
        hit = [ts, index, int(tid), goid, int(fields["sp"]), value, 0]
        return json.dumps(hit, separators=(",", ":")).encode() + b"\n"

    def _read_mem(self, addr: int, size: int) -> bytes:
        assert self._mem is not None
        return os.pread(self._mem, size, addr)

    def _type(self, type_addr: int) -> tuple[str, int | None]:
        cached = self._types.get(type_addr)
        if cached is None:
            base = self.plan.go_types_base if self.plan else None
            try:
                name = gotypes.type_name(self._read_mem, base, type_addr) if base else \
                    f"0x{type_addr:x}"
                offset = gotypes.first_string_field_offset(self._read_mem, type_addr)
            except Exception:  # noqa: BLE001 - a type we cannot read keeps its address
                name, offset = f"0x{type_addr:x}", None
            cached = self._types[type_addr] = (name, offset)
        return cached

    def _interface(self, type_addr: int, fields: dict[str, str], prefix: str) -> list | None:
        if type_addr == 0:
            return None
        name, offset = self._type(type_addr)
        message = None
        if offset == 0 and self.capture:
            message = _joined(fields, prefix, fields[prefix + "l"])
        return [name, message]

    def _value(self, point: Point, f: dict[str, str]):
        if point.decode == "cr-request":
            if not self.capture:
                return None
            return [_joined(f, "ns", f["nsl"]), _joined(f, "nm", f["nml"])]
        if point.decode == "cr-result":
            itab = int(f["itab"])
            error = None
            if itab:
                type_addr = int.from_bytes(self._read_mem(itab + 8, 8), "little")
                error = self._interface(type_addr, f, "em")
            return [int(f["rq"]) != 0, int(f["ra"]), error]
        if point.decode == "go-panic":
            return self._interface(int(f["pt"]), f, "pm")
        if point.decode in ("go-key", "go-key-ctx"):
            return _joined(f, "k", f["kl"]) if self.capture else None
        if point.decode == "go-error":
            itab = int(f["itab"])
            if not itab:
                return None
            type_addr = int.from_bytes(self._read_mem(itab + 8, 8), "little")
            return self._interface(type_addr, f, "em")
        if point.decode in ("go-duration", "go-duration-arg"):
            return int(f["dur"])
        if point.decode == "native-args":
            return [int(f["a0"]), int(f["a1"])]
        if point.decode == "native-return":
            return int(f["ret"])
        return None

    # -- while running ----------------------------------------------------------------------
    def poll(self, timeout: float) -> str | None:
        time.sleep(timeout)
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as status:
                zombie = "\nState:\tZ" in status.read()
        except OSError:
            zombie = True
        if zombie:
            self.exited = {}
            self.attached = False
            return "target-exited"
        return None

    def exit_status(self) -> str:
        return "exited" if self.exited is not None else ""

    def set_capture(self, on: bool) -> None:
        self.capture = on

    def cpu_seconds(self) -> float:
        return 0.0  # the kernel's handler time is not charged to any process of ours

    def alive(self) -> bool:
        return True

    # -- leaving ----------------------------------------------------------------------------
    def stop_target(self) -> bool:
        """Nothing is stopped: turn the probes' recording off so the trace ends here."""
        if not self.instance:
            return False
        try:
            tracefs.write(os.path.join(self.instance, "events", self.group, "enable"), "0")
        except OSError:
            return False
        return True

    def write_marker(self) -> int:
        self._marker += 1
        self._marker_wanted = True
        self._stop.set()
        return self._marker

    def detach(self) -> int:
        removed = len(self.events)
        self._remove()
        self.attached = False
        return removed

    def _remove(self) -> None:
        if self.group:
            tracefs._remove_group(self.root, self.group)

    def close(self) -> None:
        self._closing = True
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        else:
            os.close(self._w)
        self._remove()
        if self._mem is not None:
            os.close(self._mem)
            self._mem = None
