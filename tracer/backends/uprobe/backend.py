"""Kernel uprobes as a backend: the plan's entry and RET addresses as uprobes with
fetch-args, recorded by the kernel on a private trace instance. Nothing stops the operator
beyond the kernel's own handler, and killing the tracer harms nothing: the probes stay
until the next run removes them (or the operator exits).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping

from tracer.backends.base import Backend, Setting, settings_of
from tracer.backends.uprobe import calibrate, placement, ringbuf, tracefs
from tracer.binary.govalues import GoMemory
from tracer.binary.model import BinaryInfo
from tracer.errors import UserError
from tracer.probes import decoders
from tracer.probes.plan import (
    ENTRY,
    EXIT,
    KEY_FUTURE,
    KEY_GOID,
    KEY_GOID_FROM_ARG,
    POLL,
    POLL_EXIT,
    Plan,
    Point,
)
from tracer.targets.process import mapped_at

TICK_S = 0.02  # the reader reads every CPU's pages this often, never woken per event
SETTLE_NS = 10_000_000  # an event is committed this soon after its timestamp: older ones
# from every CPU are all in, so they can be put in time order and handed over
BUFFER_KB = 16384  # per CPU: about a second of 20,000 reconciles/s with names and messages


def check_uprobe(info: BinaryInfo) -> str:
    if os.geteuid() != 0:
        raise UserError("--backend uprobe needs root (kernel uprobes through tracefs): run as "
                        "root or use --backend gdb")
    tracefs.mount_point()
    return "uprobe: kernel uprobes on a private trace instance, read raw, timestamps in ns"


def _fetchargs(point: Point, goid_offset: int | None, branch: bool = False,
               slots: decoders.ErrorSlots = decoders.STD_ERROR_SLOTS,
               plan: Plan | None = None, self_reg: str | None = None) -> str:
    """What the kernel reads at each hit. Each string is one array behind one pointer chain:
    a nil pointer (no error, the common case) then faults once, not once per array (a fault
    costs about a microsecond here; measured in scripts/bench-fetchargs). A Rust future's
    points read what tracer.probes.decoders.rust_fetchargs says (`self_reg`: the
    calibration's stand-in for `self`)."""
    args = ["sp=%sp:u64"]
    if branch:
        args.append("fl=%flags:u64")
    if point.key == KEY_FUTURE:
        args += decoders.rust_fetchargs(
            point.decode, point.role,
            plan.rust_requests.get(point.function) if plan and plan.capture_args else None,
            plan.rust_results.get(point.function) if plan else None, self_reg)
        return " ".join(args)
    if point.key == KEY_GOID and goid_offset is not None:
        args.append(f"goid=+{goid_offset}(%r14):s64")
    elif point.key == KEY_GOID_FROM_ARG and goid_offset is not None:
        args.append(f"goid=+{goid_offset}(%ax):s64")
    args += decoders.fetchargs(point.decode, slots)
    return " ".join(args)


class _Event:
    """One probe's record layout: where each fetched value sits in the event's bytes."""

    def __init__(self, index: int, fields: dict[str, ringbuf.Field]) -> None:
        self.index = index
        self.scalars = [(name, f.offset, _SCALAR[(f.size, f.signed)])
                        for name, f in fields.items()
                        if not f.array and not name.startswith("common_")
                        and name != "__probe_ip"]
        self.arrays = [(name, f.offset, f.size) for name, f in fields.items() if f.array]
        self.pid = fields["common_pid"].offset

    def values(self, data: memoryview) -> dict:
        f: dict = {name: kind.unpack_from(data, off)[0] for name, off, kind in self.scalars}
        for name, off, size in self.arrays:
            f[name] = bytes(data[off:off + size])
        return f


_SCALAR = {(1, False): struct.Struct("<B"), (1, True): struct.Struct("<b"),
           (2, False): struct.Struct("<H"), (2, True): struct.Struct("<h"),
           (4, False): struct.Struct("<I"), (4, True): struct.Struct("<i"),
           (8, False): struct.Struct("<Q"), (8, True): struct.Struct("<q")}
_ID = struct.Struct("<H")
_PID = struct.Struct("<i")


def _runs(pid: str, exe: str) -> bool:
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == exe
    except OSError:
        return False


class UprobeBackend(Backend):
    name = "uprobe"
    stops_to_attach = False
    settings = (
        Setting("buffer-kb", str(BUFFER_KB), "the kernel's event buffer per CPU, in KiB"),
    )

    @classmethod
    def check(cls, info: BinaryInfo) -> str:
        return check_uprobe(info)

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.options = settings_of(type(self), settings)
        self.root = tracefs.mount_point()
        tracefs.remove_stale(self.root)
        self.hits_fd, self._w = os.pipe()
        self.attached = False
        self.exited: dict | None = None
        self.pid: int | None = None
        self.group = ""
        self.instance = ""
        self.events: list[str] = []
        self.points: list[Point] = []
        self.placements: list[placement.Placement] = []
        self.plan: Plan | None = None
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._marker = 0
        self._memory: GoMemory | None = None  # error types, read from the operator
        self._slots: decoders.ErrorSlots = decoders.STD_ERROR_SLOTS
        self._mem: int | None = None
        self.capture = True
        self._layout = ringbuf.PageLayout()
        self._formats: dict[int, _Event] = {}
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self.pages_missed = 0
        self.stack_growths = 0  # entries seen at a taken stack check (not calls)
        self.events_read = 0  # every probe hit taken from the kernel's buffers
        self.lost: dict[str, int] | None = None
        self._hits_counted: int | None = None  # the kernel's count when recording stopped
        self._link: str | None = None  # the program's path without spaces, if it needed one
        self.cost: tuple[int | None, str] = (None, "not measured")
        self._release: Callable[[], None] | None = None  # tracer run: lets the program exec
        self.releases_at_arm = False

    # -- start-up ---------------------------------------------------------------------------
    def start(self, binary: str | None) -> None:
        """Nothing to start: the probes name the program's file at arm()."""

    def attach(self, pid: int) -> None:
        if not os.path.exists(f"/proc/{pid}"):
            raise UserError(f"no process with PID {pid}")
        self.pid = pid
        self.group = f"{tracefs.GROUP_PREFIX}{pid}"
        self.attached = True

    def attach_before_exec(self, pid: int, release: Callable[[], None]) -> float:
        """tracer run: the probes go on the program's file, for this PID and its threads,
        before the parked process is let go to exec it (in arm); nothing ever stops it."""
        if not os.path.exists(f"/proc/{pid}"):
            raise UserError("the command exited before it started")
        self.pid = pid
        self.group = f"{tracefs.GROUP_PREFIX}{pid}"
        self.attached = True
        self._release = release
        self.releases_at_arm = True
        return time.monotonic()

    def _await_exec(self, exe: str, timeout: float = 30) -> None:
        """Let the parked process exec the program; return once it has."""
        assert self._release is not None and self.pid is not None
        try:
            self._release()
        except OSError:
            raise UserError("the command exited before it started") from None
        finally:
            self._release = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                # The exe link changes before the kernel maps the program, and the session
                # then reads where it is mapped: wait for both.
                if (os.path.realpath(f"/proc/{self.pid}/exe") == exe
                        and mapped_at(self.pid, exe) is not None):
                    return
                with open(f"/proc/{self.pid}/status") as status:
                    if "\nState:\tZ" in status.read():
                        break
            except OSError:
                break
            time.sleep(0.001)
        raise UserError("the command did not start under the tracer (it exited or hung "
                        "before its exec)")

    def arm(self, plan: Plan, bias: int) -> int:
        from tracer.binary.analyze import analyze

        assert self.pid is not None
        # Rust futures: a poll's entry and drop carry the future (`self`); its RETs do not,
        # and the async pairer gives each to its thread's innermost open poll. RETs get
        # uprobes of their own, not uretprobes: a uretprobe replaces the caller's return
        # address on the stack, and a panic unwinding through that frame (tokio catches
        # a task's panics above the poll) would find no unwind info there and abort.
        self.plan = plan
        self._slots = tuple((off, kind) for off, kind in plan.go_error_slots)
        # tracer run: the process still runs the parker; the probes go on the program's file.
        exe = os.path.realpath(plan.binary if self._release else f"/proc/{self.pid}/exe")
        info = analyze(exe)
        definitions = []
        self.placements = [placement.place(info, p, p.role == ENTRY) for p in plan.points]
        for index, (point, where) in enumerate(zip(plan.points, self.placements, strict=True)):
            offset = info.file_offset(where.addr)
            event = f"p{index}"
            fetch = _fetchargs(point, plan.go_goid_offset, where.branch, self._slots, plan)
            definitions.append(f"p:{self.group}/{event} {self._probe_path(exe)}:0x{offset:x} "
                               f"{fetch}")
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
            tracefs.write(os.path.join(self.instance, "buffer_size_kb"),
                          self.options["buffer-kb"])
            self._calibrate(plan, info, exe)
            self._filter_threads()
            self._layout = ringbuf.page_layout(self.root)
            for index, event in enumerate(self.events):
                event_id, fields = ringbuf.event_format(self.root, self.group, event)
                self._formats[event_id] = _Event(index, fields)
        except OSError as exc:
            self._remove()
            raise UserError(f"the kernel refused the uprobes ({exc.strerror}): use "
                            "--backend gdb") from None
        self._reader = threading.Thread(target=self._read, name="tracer-uprobe", daemon=True)
        self._reader.start()
        # Recording starts now, before the header is written: the operator never stopped,
        # so a call made from here on must not be missed.
        tracefs.write(os.path.join(self.instance, "events", self.group, "enable"), "1")
        if self._release:
            self._await_exec(exe)  # from its first instruction, every call is recorded
        return len(definitions)

    def _probe_path(self, exe: str) -> str:
        """The program's path as a uprobe definition can hold it: the kernel splits the line
        on white space, so a path with a space is named through a link without one (the
        probe binds the file itself; the link goes at close)."""
        if not any(c.isspace() for c in exe):
            return exe
        if self._link is None:
            folder = tempfile.mkdtemp(prefix="tracer-uprobe-", dir="/tmp")
            self._link = os.path.join(folder, "program")
            os.symlink(exe, self._link)
        return self._link

    def _filter_threads(self) -> None:
        """Record the operator's threads only. event-fork first, so a thread made by one
        already in the filter joins it; then the threads listed until no new one appears
        (one made between a listing and the filter's write would otherwise be left out, and
        a goroutine's calls on it silently missing: a loss never counted)."""
        tracefs.write(os.path.join(self.instance, "options", "event-fork"), "1")
        added: set[str] = set()
        for _ in range(50):
            new = set(os.listdir(f"/proc/{self.pid}/task")) - added
            if not new:
                return
            tracefs.write(os.path.join(self.instance, "set_event_pid"), " ".join(sorted(new)),
                          append=bool(added))
            added |= new
        raise OSError(errno.EAGAIN, "the operator's threads kept changing")

    def _calibrate(self, plan: Plan, info: BinaryInfo, exe: str) -> None:
        """The cost of one hit of these probes, before the operator's are recorded."""
        at = next((i for i, p in enumerate(plan.points) if p.role in (ENTRY, POLL)), None)
        exit_ = next((p for p in plan.points if p.role in (EXIT, POLL_EXIT)), None)
        if at is None or exit_ is None:
            self.cost = (None, "not measured: the plan has no entry and return")
            return
        entry, where = plan.points[at], self.placements[at]
        with open(exe, "rb") as f:
            f.seek(info.file_offset(where.addr))
            code = f.read(16)
        self.cost = calibrate.measure(self.root, self.instance, self.group, code,
                                      _fetchargs(entry, plan.go_goid_offset, where.branch,
                                                 self._slots, plan, "rdi"),
                                      _fetchargs(exit_, plan.go_goid_offset, False, self._slots,
                                                 plan))

    def header_fields(self) -> dict:
        """For the trace header: what a hit costs the operator, and how that was measured."""
        ns, how = self.cost
        return {"cost_per_hit_ns": ns, "cost_measured": how}

    def resume(self) -> None:
        """Nothing was stopped, and recording started when armed."""

    # -- hits -------------------------------------------------------------------------------
    def _read(self) -> None:
        """Every TICK_S, each CPU's pages until none is left; hits handed over in time order
        once no CPU can still add an earlier one (a goroutine's entry and return may be
        recorded on different CPUs)."""
        folder = os.path.join(self.instance, "per_cpu")
        fds = [os.open(os.path.join(folder, cpu, "trace_pipe_raw"), os.O_RDONLY | os.O_NONBLOCK)
               for cpu in sorted(os.listdir(folder))]
        out = os.fdopen(self._w, "wb", buffering=0)
        held: list[tuple[int, bytes]] = []
        try:
            while True:
                stopping = self._stop.wait(TICK_S)
                if stopping:
                    time.sleep(TICK_S)  # a hit begun before the probes went off is committed
                floor = time.monotonic_ns() - SETTLE_NS
                for fd in fds:
                    self._drain(fd, held)
                if not held and not stopping:
                    continue
                held.sort()
                if stopping:
                    ready, held = held, []
                else:
                    cut = next((i for i, (ts, _) in enumerate(held) if ts > floor), len(held))
                    ready, held = held[:cut], held[cut:]
                if ready:
                    out.write(b"".join(line for _, line in ready))
                if stopping:
                    if self._marker_wanted:
                        out.write(json.dumps({"marker": self._marker}).encode() + b"\n")
                        self._marker_wanted = False
                    if self._closing:
                        return
                    self._stop.clear()
        finally:
            for fd in fds:
                os.close(fd)
            out.close()

    _marker_wanted = False
    _closing = False

    def _drain(self, fd: int, held: list[tuple[int, bytes]]) -> None:
        while True:
            try:
                page = os.read(fd, self._page_size)
            except BlockingIOError:
                return
            if not page:
                return
            events, missed = ringbuf.events(page, self._layout)
            if missed:
                self.pages_missed += 1
            for ts, data in events:
                self.events_read += 1
                line = self._convert(ts, data)
                if line is not None:
                    held.append((ts, line))

    def _convert(self, ts: int, data: memoryview) -> bytes | None:
        event = self._formats.get(_ID.unpack_from(data, 0)[0])
        if event is None:
            return None
        point = self.points[event.index]
        tid = _PID.unpack_from(data, event.pid)[0]
        try:
            fields = event.values(data)
            if "fl" in fields and placement.branch_taken(fields["fl"]):
                self.stack_growths += 1
                return None  # the stack grows first; the function starts again
            if point.key == KEY_FUTURE:
                key, value = self._future_value(point, fields)
            else:
                key, value = fields.get("goid"), self._value(point, fields)
        except Exception as exc:  # noqa: BLE001 - a record we cannot decode is said, not fatal
            return json.dumps({"agent_error": f"uprobe p{event.index}: {exc!r}"}).encode() + \
                b"\n"
        hit = [ts, event.index, tid, key, fields["sp"], value, 0]
        return json.dumps(hit, separators=(",", ":")).encode() + b"\n"

    def lost_counts(self) -> dict[str, int]:
        """The instance's own count of events it could not keep (read at the end, before the
        instance goes): overwritten unread (overrun), refused with the buffer full (dropped),
        and pages the reader found flagged as having lost events before them."""
        counts = {"overrun": 0, "dropped": 0, "commit_overrun": 0}
        folder = os.path.join(self.instance, "per_cpu")
        for cpu in os.listdir(folder):
            with open(os.path.join(folder, cpu, "stats")) as f:
                for line in f:
                    key, _, value = line.partition(":")
                    key = key.strip().replace(" ", "_").replace("dropped_events", "dropped")
                    if key in counts:
                        counts[key] += int(value.split()[0])
        counts["pages_missed"] = self.pages_missed
        if self._hits_counted is not None:
            # Hits the kernel counted before recording stopped that never reached the reader
            # (e.g. on a thread outside the event filter): at least this many are missing.
            counts["unrecorded"] = max(0, self._hits_counted - self.events_read)
        return counts

    def _read_mem(self, addr: int, size: int) -> bytes:
        if self._mem is None:
            # Opened at the first hit that needs it: with tracer run, a hit means the program
            # has replaced the parker, whose memory the file would otherwise show.
            assert self.pid is not None
            self._mem = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
        return os.pread(self._mem, size, addr)

    def _type_of(self, word: int, kind: str) -> int | None:
        """The concrete type of an error's first word: an itab's type (read once: an itab
        never changes), or the word itself for a panic's empty interface. None when the
        operator has exited before a new itab could be read."""
        if kind != decoders.ERROR:
            return word
        try:
            return self._go().itab_type(word)
        except (OSError, ValueError, struct.error):
            return None

    def _go(self) -> GoMemory:
        if self._memory is None:
            base = self.plan.go_types_base if self.plan else None
            self._memory = GoMemory(self._read_mem, base, None)
        return self._memory

    def _value(self, point: Point, f: dict):
        return decoders.from_fetched(point.decode, f, self._go(), self.capture, self._type_of,
                                     self._slots)

    def _future_value(self, point: Point, f: dict):
        plan = self.plan
        assert plan is not None
        return decoders.rust_from_fetched(point.decode, point.role, f, self.capture,
                                          plan.rust_requests.get(point.function),
                                          plan.rust_results.get(point.function))

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
        """The pause budget's measure. Nothing stops, but each hit holds one of the operator's
        threads in the kernel's handler (charged to no process of ours) for about the cost
        measured at attach; 0 when it could not be measured."""
        ns = self.cost[0]
        return self.events_read * ns / 1e9 if ns else 0.0

    def alive(self) -> bool:
        return True

    # -- leaving ----------------------------------------------------------------------------
    def stop_target(self) -> bool:
        """Nothing is stopped: turn the probes' recording off so the trace ends here."""
        if not self.instance:
            return False
        self._hits_counted = self._kernel_hits()
        try:
            tracefs.write(os.path.join(self.instance, "events", self.group, "enable"), "0")
        except OSError:
            return False
        return True

    def _kernel_hits(self) -> int | None:
        """The kernel's own count of our probes' hits (uprobe_profile), or None when it cannot
        be told apart: another process runs the same file (its hits count too), or another
        tracer's probes bear the same names on it."""
        if not self.events or self.plan is None or self.pid is None:
            return None
        exe = os.path.realpath(self.plan.binary if self.releases_at_arm
                               else f"/proc/{self.pid}/exe")
        try:
            with open(os.path.join(self.root, "uprobe_profile")) as f:
                rows = [line.split() for line in f]
            if any(other != str(self.pid) and _runs(other, exe) for other in os.listdir("/proc")
                   if other.isdigit()):
                return None
        except OSError:
            return None
        named = self._link or exe
        ours = [r for r in rows if len(r) == 3 and r[0] == named and r[1] in self.events]
        if len(ours) != len(self.events):
            return None
        return sum(int(r[2]) for r in ours)

    def write_marker(self) -> int:
        self._marker += 1
        self._marker_wanted = True
        self._stop.set()
        return self._marker

    def detach(self) -> int:
        removed = len(self.events)
        self._count_lost()
        self._remove()
        self.attached = False
        return removed

    def _count_lost(self) -> None:
        if self.lost is None and self.instance and os.path.isdir(self.instance):
            try:
                self.lost = self.lost_counts()
            except OSError:
                pass

    def end_fields(self) -> dict:
        """For the end line: events the kernel could not keep. Never silent."""
        self._count_lost()
        fields: dict = {"events_lost": self.lost}
        if any(p.branch for p in self.placements):
            fields["entries_at_stack_growth"] = self.stack_growths
        return fields

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
        self._count_lost()
        self._remove()
        if self._link is not None:
            shutil.rmtree(os.path.dirname(self._link), ignore_errors=True)
            self._link = None
        if self._mem is not None:
            os.close(self._mem)
            self._mem = None
