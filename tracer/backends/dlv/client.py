"""The Delve client (the "Delve agent" in messages): the one client of a headless `dlv attach`,
in a process of its own.

`python -m tracer.backends.dlv.client --hits-fd N` reads commands from stdin and answers on
stdout, one JSON object per line each way ({"id": k, "op": ...} -> {"id": k, "ok": ...};
events carry "event" instead of "id"). Hits go to the pipe `--hits-fd` in the format of the
gdb's hit handler: [ts_ns, point, lwp, goid, sp, value, handler_ns].

Why a process of its own: Delve (started without --accept-multiclient) halts and detaches
when its client's connection ends, and that halt is `kill(pid, SIGTRAP)`: if it races a
breakpoint hit, the SIGTRAP stays pending and reaches the operator after the detach, which
kills a Go program ("SIGTRAP: trace trap"). Measured: a raw client killed while the operator
ran 400 calls/s left it a SIGTRAP in 5 of 6 runs with Delve 1.20.2, in 9 of 16 with Delve
1.27.2, whose server still halts and detaches when its one client goes (rpccommon's
ServerImpl.Stop). The sample operator catches it; a real one dies. With --accept-multiclient
the operator stays frozen in tracing stop instead. So the connection must not end with the
tracer: this agent holds it, and when the tracer goes away (end of stdin, SIGTERM, SIGHUP,
SIGINT) it leaves the safe way, then exits. If the tracer died before the agent connected,
the agent finds Delve's port in dlv.log and detaches it (Delve would otherwise keep the
operator stopped, waiting).

The safe way out (`park`, then `detach`):
1. Never halt while breakpoints can fire: wait up to IDLE_WAIT for the next hit; that stop is
   a tracepoint stop, with no signal of ours pending. Clear every breakpoint, Detach.
2. No hit (the operator is idle): take our int3 bytes out of its code first, writing the
   file's bytes through /proc/PID/mem (Delve still believes they are in; clearing them later
   writes the same bytes), let a trap already taken surface (SETTLE), then halt. No
   breakpoint can race that halt, so the stop it causes consumed its SIGTRAP.
3. If a hit still came with the halt, clear every breakpoint and continue once more so a
   pending SIGTRAP is taken by Delve (or halt again if none was pending) before detaching.
   Measured, a halt sent in full flow (400 calls/s) and detached without this drain: a
   SIGTRAP reached the operator in 13 of 15 runs with Delve 1.20.2, 12 of 15 with Delve
   1.27.2; with it, in none of 15 with either.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import sys
import time
import traceback

from tracer.backends.dlv import decode, placement
from tracer.backends.dlv.rpc import ConnectionLost, DelveRPC, RPCError
from tracer.targets.process import altered_code, restore_code

IDLE_WAIT = 0.2  # a stop request waits this long for a hit before halting
SETTLE = 0.05  # after taking the int3 bytes out: for a trap already taken to reach Delve
DRAIN_WAIT = 0.3  # after a halt that raced a hit: for a pending SIGTRAP to stop the process
HALT_WAIT = 10.0
MAX_AGENT_ERRORS = 20
NAME_FAILURES_BEFORE_REGISTERS = 3
MAX_CONTINUE_ERRORS = 20

# Decoders Delve can give by name (LoadArgs at the breakpoint): what it loads for each.
BY_NAME_LOAD = {"cr-request": decode.ENTRY_LOAD, "cr-result": decode.EXIT_LOAD,
                "cr-result-priority": decode.EXIT_LOAD}

LISTENING = re.compile(rb"API server listening at: [\d.]+:(\d+)")
STOPPED, RUNNING, EXITED, DETACHED, LOST = "stopped", "running", "exited", "detached", "lost"


class Leave(Exception):
    """The tracer is gone or asked the agent to end."""


class Agent:
    def __init__(self, hits_fd: int, ctl_in: int = 0, ctl_out: int = 1) -> None:
        self.hits_fd = hits_fd
        self.ctl_in = ctl_in
        self.ctl_out = ctl_out
        self._ctl_buf = b""
        self.rpc: DelveRPC | None = None
        self.pid: int | None = None
        self.exe: str | None = None
        self.state = STOPPED
        self.cont_id: int | None = None
        self.exit_status: int | None = None
        self.points: list[dict] = []
        self.bias = 0
        self.by_bp: dict[int, list[int]] = {}  # Delve breakpoint id -> plan point indexes
        self.bp_specs: dict[int, dict] = {}  # Delve breakpoint id -> the api.Breakpoint
        self.plan_addrs: list[int] = []  # static addresses of our breakpoints
        self.sp_adjust: list[int] = []  # per point: its breakpoint may sit past a push
        self.mode = "registers"
        self.memory: decode.Memory | None = None
        self.hits = 0
        self.errors = 0
        self.register_fallbacks = 0
        self._name_failures = 0
        self.version: dict = {}
        self.delve_static: set[int] = set()  # Delve's own breakpoints (static addresses)
        self.last_stop_hits = 0
        self._continue_errors = 0
        self.halted = False
        self.halt_raced = False
        self.hits_broken = False
        self.ctl_broken = False
        self.leave_requested = False
        self.wake_fd: int | None = None  # a signal writes here (signal.set_wakeup_fd)
        self.workdir: str | None = None  # the run's folder: dlv.log tells Delve's port

    # -- output --------------------------------------------------------------------------------
    def _write(self, fd: int, obj) -> bool:
        try:
            os.write(fd, json.dumps(obj, separators=(",", ":")).encode() + b"\n")
            return True
        except OSError:
            return False

    def emit(self, obj) -> None:
        if not self.hits_broken and not self._write(self.hits_fd, obj):
            self.hits_broken = True  # the tracer is gone; keep going to leave cleanly

    def send(self, obj: dict) -> None:
        if not self.ctl_broken and not self._write(self.ctl_out, obj):
            self.ctl_broken = True

    def agent_error(self, message: str, point: int | None = None) -> None:
        self.errors += 1
        print(f"agent error at point {point}: {message}", file=sys.stderr, flush=True)
        if self.errors <= MAX_AGENT_ERRORS:
            self.emit({"agent_error": message, "point": point})

    # -- commands --------------------------------------------------------------------------------
    def read_commands(self) -> list[dict]:
        try:
            chunk = os.read(self.ctl_in, 1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            raise Leave("end of the tracer's commands")
        self._ctl_buf += chunk
        out = []
        while b"\n" in self._ctl_buf:
            line, self._ctl_buf = self._ctl_buf.split(b"\n", 1)
            if line.strip():
                out.append(json.loads(line))
        return out

    def handle(self, cmd: dict) -> None:
        op = cmd.get("op")
        rid = cmd.get("id")
        try:
            fields = getattr(self, "op_" + str(op))(cmd)
            self.send({"id": rid, "ok": True, **(fields or {})})
        except (ConnectionLost, Leave):
            raise
        except Exception as exc:  # noqa: BLE001 - answered, and the agent goes on
            self.send({"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    def op_connect(self, cmd: dict) -> dict:
        self.pid = int(cmd["pid"])
        self.exe = f"/proc/{self.pid}/exe"
        self.rpc = DelveRPC.connect(int(cmd["port"]), timeout=float(cmd.get("timeout_s", 60)))
        # Delve accepts the connection only once it has attached and read the binary.
        state = self.rpc.call("State", timeout=float(cmd.get("timeout_s", 60)),
                              NonBlocking=True)["State"]
        self.version = self.rpc.call("GetVersion")
        self.memory = decode.Memory(decode.examine_reader(self.rpc.call), None, None)
        return {"threads": len(state.get("Threads") or []),
                "delve": self.version.get("DelveVersion", "").split("\n")[0],
                "target_go": self.version.get("TargetGoVersion", ""),
                "max_go": self.version.get("MaxSupportedVersionOfGo", "")}

    def op_arm(self, cmd: dict) -> dict:
        assert self.rpc is not None and self.memory is not None and self.exe is not None
        plan = cmd["plan"]
        self.points = plan["points"]
        self.bias = plan.get("bias", 0)
        go = plan.get("go") or {}
        self.memory.types_base = go.get("types_base")
        self.memory.goid_offset = go.get("goid_offset")
        self.memory.capture_args = plan.get("capture_args", True)
        notes = []
        self.mode, why = self._choose_mode(cmd.get("values", "auto"))
        by_addr: dict[int, list[int]] = {}
        self.sp_adjust = []
        for index, point in enumerate(self.points):
            spot = placement.place(self.exe, point["addr"])
            by_addr.setdefault(spot.addr, []).append(index)
            self.sp_adjust.append(spot.sp_adjust)
        for addr, indexes in sorted(by_addr.items()):
            spec = {"addr": addr + self.bias, "continue": True, "name": f"tracer{addr:x}"}
            load = self._load_config(self.points[indexes[0]]["decode"])
            if load is not None:
                spec["LoadArgs"] = load
            created = self.rpc.call("CreateBreakpoint", Breakpoint=spec)["Breakpoint"]
            self.by_bp[created["id"]] = indexes
            self.bp_specs[created["id"]] = created
        self.plan_addrs = sorted(by_addr)
        delve_addrs = self._delve_addresses()
        self.delve_static = {a - self.bias for a in delve_addrs} - set(self.plan_addrs)
        notes.extend(self._check_returns())
        if self.mode == "name":
            notes.insert(0, "dlv values: by name (Delve loads Reconcile's request and results "
                            "from DWARF at each hit); panic values from registers")
        else:
            notes.insert(0, "dlv values: from registers and memory (ListRegisters, "
                            "ExamineMemory), as gdb's hit handler reads them"
                            f"{': ' + why if why else ''}")
        return {"armed": len(self.points), "breakpoints": len(self.by_bp), "mode": self.mode,
                "notes": notes, "delve_addresses": delve_addrs}

    def _load_config(self, decoder: str | None) -> dict | None:
        if self.mode != "name":
            return None
        return BY_NAME_LOAD.get(decoder or "")

    def _choose_mode(self, asked: str) -> tuple[str, str]:
        """("name" or "registers", why). By name needs a Delve that knows the operator's Go
        and an unoptimized build; anything else reads registers."""
        if asked == "registers":
            return "registers", "asked for"
        target = _go_version(self.version.get("TargetGoVersion", ""))
        newest = _go_version(self.version.get("MaxSupportedVersionOfGo", ""))
        if target and newest and target[:2] > newest[:2]:
            return "registers", (f"this Delve reads Go up to {newest[0]}.{newest[1]} and the "
                                 f"operator is go{'.'.join(map(str, target))}, so it cannot "
                                 "load arguments")
        if asked == "name":
            return "name", "asked for"
        optimized = self._optimized_functions()
        if optimized:
            # Delve 1.20.2 could not read an optimized function's results ("empty OP stack");
            # 1.27.2 read the sample's (values=name), but registers stay the way
            # for optimized builds, as gdb's hit handler reads them.
            return "registers", (f"{optimized[0]} is optimized (built without "
                                 "-gcflags=all=-N -l)")
        return "name", ""

    def _optimized_functions(self) -> list[str]:
        assert self.rpc is not None
        names = []
        for point in self.points:
            if point["decode"] not in BY_NAME_LOAD:
                continue
            locs = self.rpc.call("FindLocation", Scope={"GoroutineID": -1},
                                 Loc=f"*0x{point['addr'] + self.bias:x}")["Locations"]
            fn = (locs[0].get("function") or {}) if locs else {}
            if fn.get("optimized", True):
                names.append(point["function"])
        return names

    def _check_returns(self) -> list[str]:
        """Cross-check the plan's RETs with Delve's FunctionReturnLocations (which also lists
        the `CALL runtime.deferreturn` sites)."""
        assert self.rpc is not None
        notes = []
        exits: dict[str, set[int]] = {}
        for point in self.points:
            if point["role"] == "exit":
                exits.setdefault(point["function"], set()).add(point["addr"] + self.bias)
        for function, addrs in exits.items():
            try:
                delve = set(self.rpc.call("FunctionReturnLocations", FnName=function)["Addrs"])
            except RPCError as exc:
                notes.append(f"dlv: FunctionReturnLocations({function}) failed: {exc}")
                continue
            missing = addrs - delve
            if missing:
                notes.append(f"dlv: {len(missing)} RET(s) of {function} found by the tracer are "
                             "not in Delve's FunctionReturnLocations")
        return notes

    def _delve_addresses(self) -> list[int]:
        """Every address Delve has a breakpoint on, its own included (unrecovered-panic,
        runtime-fatal-throw): all must hold the file's bytes after the detach."""
        assert self.rpc is not None
        out = set()
        for bp in self.rpc.call("ListBreakpoints")["Breakpoints"]:
            out.update(bp.get("addrs") or [bp["addr"]])
        return sorted(out)

    def op_resume(self, cmd: dict) -> dict:
        if self.state == STOPPED:
            self._continue()
        return {"state": self.state}

    def op_stop(self, cmd: dict) -> dict:
        how = self.park()
        return {"stopped": self.state == STOPPED, "how": how, "state": self.state,
                "hits_at_stop": self.last_stop_hits}

    def op_marker(self, cmd: dict) -> dict:
        # Every hit so far is already written: hits are written as soon as they are decoded.
        self.emit({"marker": cmd["n"], "hits": self.hits, "errors": self.errors,
                   "register_fallbacks": self.register_fallbacks})
        return {}

    def op_capture(self, cmd: dict) -> dict:
        if self.memory is not None:
            self.memory.capture_args = bool(cmd["on"])
        return {}

    def op_detach(self, cmd: dict) -> dict:
        removed = self.detach()
        return {"removed": removed, "state": self.state}

    def op_status(self, cmd: dict) -> dict:
        return {"state": self.state, "hits": self.hits, "errors": self.errors}

    # -- the hit loop ------------------------------------------------------------------------
    def _continue(self) -> None:
        assert self.rpc is not None
        self.cont_id = self.rpc.send("Command", name="continue")
        self.state = RUNNING

    def _take_continue(self) -> bool:
        """Handle the continue's answer if it arrived: write its hits; the process is then
        stopped (or exited). True when it was handled."""
        assert self.rpc is not None
        if self.cont_id is None:
            return False
        got = self.rpc.take(self.cont_id)
        if got is None:
            return False
        ts, message = got
        self.cont_id = None
        self.state = STOPPED
        error = message.get("error")
        if error:
            if "exited" in str(error):
                self._exited(_exit_status_from(str(error)))
            elif not _process_alive(self.pid):
                self._exited(None)  # killed: Delve says only "no such process"
            else:
                self._continue_errors += 1
                self.agent_error(f"continue: {error}")
                if self._continue_errors >= MAX_CONTINUE_ERRORS:
                    raise ConnectionLost(f"Delve keeps failing to continue: {error}")
                time.sleep(0.05)
            return True
        self._continue_errors = 0
        state = (message.get("result") or {}).get("State") or {}
        if state.get("exited"):
            self._exited(state.get("exitStatus"))
            return True
        self._hits(ts, state)
        return True

    def _exited(self, status) -> None:
        self.state = EXITED
        self.exit_status = status
        self.send({"event": "exited", "status": status})

    def _hits(self, ts: int, state: dict) -> int:
        n = 0
        for thread in state.get("Threads") or []:
            bp = thread.get("breakPoint")
            if not bp:
                continue
            for index in self.by_bp.get(bp.get("id"), ()):
                n += 1
                self._hit(ts, index, thread)
        self.last_stop_hits = n
        return n

    def _hit(self, ts: int, index: int, thread: dict) -> None:
        assert self.memory is not None
        self.hits += 1
        point = self.points[index]
        try:
            goid = thread.get("goroutineID") or None
            value = sp = None
            regs = None
            done = False
            if self.mode == "name" and point["decode"] in BY_NAME_LOAD:
                done, value, sp = self._by_name(point, thread)
            if not done or point["key"] == "goid-rax" or sp is None:
                regs = self._registers(thread["id"])
                sp = regs.get("rsp", 0) + self.sp_adjust[index]
                if not done:
                    value = self.memory.decode_registers(point["decode"], regs)
            if point["key"] == "goid-rax":  # runtime.recovery(gp *g): the panicking g
                goid = self.memory.goid(regs["rax"]) if regs else None
            handler = time.monotonic_ns() - ts
            self.emit([ts, index, thread.get("id", 0), goid, sp, value, handler])
        except (RPCError, decode.Undecodable, ValueError, KeyError, TypeError,
                OSError, TimeoutError) as exc:
            self.agent_error(f"{type(exc).__name__}: {exc}", index)

    def _by_name(self, point: dict, thread: dict) -> tuple[bool, object, int | None]:
        assert self.memory is not None
        args = (thread.get("breakPointInfo") or {}).get("arguments") or []
        try:
            if point["decode"] == "cr-request":
                value = decode.request_by_name(args, self.memory.capture_args)
            else:
                value = decode.result_by_name(args, self.memory)
        except decode.Undecodable:
            self.register_fallbacks += 1
            self._name_failures += 1
            if self._name_failures >= NAME_FAILURES_BEFORE_REGISTERS:
                self._to_registers()
            return False, None, None
        self._name_failures = 0
        return True, value, decode.frame_key(args)

    def _to_registers(self) -> None:
        """Delve keeps failing to read by name (a Go it does not know): stop asking it to
        load arguments, which costs time at every hit, and read registers from now on."""
        assert self.rpc is not None
        self.mode = "registers"
        print(f"by name failed {self._name_failures} times in a row "
              f"({self.register_fallbacks} in all): values from registers from now on",
              file=sys.stderr, flush=True)
        for bp_id, spec in self.bp_specs.items():
            if spec.get("LoadArgs"):
                spec = {**spec, "LoadArgs": None}
                self.rpc.call("AmendBreakpoint", Breakpoint=spec)
                self.bp_specs[bp_id] = spec

    def _registers(self, thread_id: int) -> dict[str, int]:
        assert self.rpc is not None
        regs = self.rpc.call("ListRegisters", ThreadID=thread_id, IncludeFp=False)["Regs"]
        return decode.parse_registers(regs)

    def step(self, timeout: float | None) -> None:
        """Wait for the continue's answer or a command; resume after every stop."""
        assert self.rpc is not None or self.state != RUNNING
        fds = [self.ctl_in] + ([self.wake_fd] if self.wake_fd is not None else [])
        if self.state == RUNNING and self.rpc is not None:
            fds.append(self.rpc.fileno())
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            ready = []
        if self.wake_fd is not None and self.wake_fd in ready:
            try:
                os.read(self.wake_fd, 512)
            except OSError:
                pass
        if self.leave_requested:
            raise Leave("signal")
        if self.rpc is not None and self.rpc.fileno() in ready:
            self.rpc.receive(0)
            if self._take_continue() and self.state == STOPPED:
                self._continue()
        if self.ctl_in in ready:
            for cmd in self.read_commands():
                self.handle(cmd)

    # -- leaving ---------------------------------------------------------------------------------
    def _wait_continue(self, timeout: float) -> bool:
        """Wait up to `timeout` for the continue in flight to come back (hits written)."""
        assert self.rpc is not None
        deadline = time.monotonic() + timeout
        while self.state == RUNNING:
            if self._take_continue():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.rpc.receive(left)
        return True

    def park(self) -> str:
        """Bring the process to a stop that leaves no signal of ours pending."""
        if self.state != RUNNING:
            return self.state
        assert self.rpc is not None and self.exe is not None and self.pid is not None
        if self._wait_continue(IDLE_WAIT):
            return "hit"
        # Idle: no breakpoint byte may be left when the halt's SIGTRAP is sent.
        addrs = sorted(set(self.plan_addrs) | self.delve_static)
        for _ in range(3):
            try:
                restore_code(self.pid, self.exe, addrs, self.bias)
            except OSError as exc:
                self.agent_error(f"could not take the breakpoints out before halting: {exc}")
            if self._wait_continue(SETTLE):
                return "hit"
            if not altered_code(self.pid, self.exe, addrs, self.bias):
                break
        self.rpc.send("Command", name="halt")
        self.halted = True
        if not self._wait_continue(HALT_WAIT):
            return "timeout"
        if self.state == STOPPED and self.last_stop_hits:
            self.halt_raced = True
        return "halt"

    def clear_all(self) -> int:
        """Clear every breakpoint, Delve's own included; returns how many of ours."""
        assert self.rpc is not None
        removed = 0
        for bp in self.rpc.call("ListBreakpoints")["Breakpoints"]:
            try:
                self.rpc.call("ClearBreakpoint", Id=bp["id"])
            except RPCError as exc:
                self.agent_error(f"ClearBreakpoint {bp['id']}: {exc}")
                continue
            if bp["id"] in self.by_bp:
                removed += 1
        self.by_bp.clear()
        return removed

    def drain(self) -> None:
        """After a halt that came with a hit: its SIGTRAP may still be pending. With no
        breakpoint left, continue: Delve takes a pending SIGTRAP (a stop at no breakpoint,
        which its continue goes on from, or returns on); then a halt races nothing."""
        assert self.rpc is not None
        self._continue()
        if self._wait_continue(DRAIN_WAIT):
            return
        self.rpc.send("Command", name="halt")
        self._wait_continue(HALT_WAIT)

    def detach(self) -> int:
        assert self.rpc is not None
        if self.state == RUNNING:
            self.park()
        if self.state != STOPPED:
            return 0
        removed = self.clear_all()
        if self.halt_raced:
            self.drain()
        if self.state == STOPPED:
            self.rpc.call("Detach", Kill=False)
            self.state = DETACHED
        return removed

    def leave(self) -> None:
        """The tracer is gone: leave the operator running with no breakpoint in it."""
        if self.rpc is None:
            self._rescue_unconnected()
            return
        if self.rpc.closed:
            return
        try:
            if self.state in (RUNNING, STOPPED):
                self.detach()
            elif self.state == EXITED:
                self.rpc.call("Detach", Kill=False, timeout=5)
        except (RPCError, ConnectionLost, TimeoutError, OSError):
            pass

    def _rescue_unconnected(self) -> None:
        """The tracer died after starting dlv but before this agent connected: Delve attaches
        (stopping every thread) and would wait for a client forever. Connect and detach."""
        log = os.path.join(self.workdir, "dlv.log") if self.workdir else None
        if not log or not os.path.exists(log):
            return
        deadline = time.monotonic() + 10
        port = None
        while port is None and time.monotonic() < deadline:
            with open(log, "rb") as f:
                match = LISTENING.search(f.read())
            if match:
                port = int(match[1])
            else:
                time.sleep(0.02)
        if port is None:
            return
        try:
            self.rpc = DelveRPC.connect(port, timeout=5)
            self.rpc.call("State", timeout=120, NonBlocking=True)
            self.rpc.call("Detach", timeout=30, Kill=False)
        except (OSError, RPCError, ConnectionLost, TimeoutError):
            pass

    def serve(self) -> int:
        try:
            while True:
                self.step(None)
        except Leave:
            self.leave()
            return 0
        except Exception as exc:  # noqa: BLE001 - a bug here must still leave cleanly
            if isinstance(exc, ConnectionLost):
                return self._lost(exc)
            traceback.print_exc()
            self.send({"event": "lost", "message": f"agent error: {exc!r}"})
            self.leave()
            return 1

    def _lost(self, exc: Exception) -> int:
        # Delve died attached (killed): its int3 bytes are still in the operator, which
        # dies of SIGTRAP on its next call there. Put the file's bytes back at once; the
        # tracer does it too when the hit pipe ends, but later.
        if self.state in (RUNNING, STOPPED) and self.pid is not None and self.plan_addrs:
            try:
                left = restore_code(self.pid, str(self.exe),
                                    sorted(set(self.plan_addrs) | self.delve_static),
                                    self.bias)
                print(f"Delve died attached; code restored ({len(left)} byte(s) left)",
                      file=sys.stderr, flush=True)
            except OSError as err:
                print(f"Delve died attached; code not restored: {err}", file=sys.stderr,
                      flush=True)
        self.state = LOST
        self.send({"event": "lost", "message": str(exc)})
        return 1


def _process_alive(pid: int | None) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _go_version(text: str) -> tuple[int, ...] | None:
    """(1, 27, 3) from "Go cmd/compile go1.27.3" or "1.20.0"."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    return tuple(int(x) for x in match.groups() if x is not None)


def _exit_status_from(error: str) -> int | None:
    # "Process 1234 has exited with status 0"
    tail = error.rsplit("status", 1)[-1].strip()
    try:
        return int(tail.split()[0])
    except (ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits-fd", type=int, required=True)
    parser.add_argument("--workdir", help="the run's private folder (logs): removed at the "
                        "end, even when the tracer was killed")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the folder and its logs (--backend-option keep-logs=on)")
    args = parser.parse_args(argv)
    agent = Agent(args.hits_fd)
    agent.workdir = args.workdir
    # The tracer's end must not end this process before it has left the operator cleanly.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def on_signal(signum, _frame):
        agent.leave_requested = True

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    agent.wake_fd = wake_r
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return agent.serve()
    finally:
        if args.workdir and not args.keep_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
