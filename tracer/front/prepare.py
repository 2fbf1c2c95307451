"""From what the user named to a plan, written once for every command: a PID or a command
-> its process and program -> the binary's analysis -> the plan of what to trace."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass

from tracer.binary.analyze import analyze
from tracer.binary.model import BinaryError, BinaryInfo
from tracer.errors import UserError
from tracer.front.options import TraceOptions
from tracer.probes.compile import compile_plan
from tracer.probes.plan import Plan
from tracer.session.session import Target
from tracer.targets.process import inspect_process


@dataclass
class Prepared:
    """A process (or a command) to trace, its binary, and the plan for it."""

    target: Target
    info: BinaryInfo
    plan: Plan


def read_binary(path: str, shown: str | None = None) -> BinaryInfo:
    """The binary's analysis, or one clear error; `shown` names it in messages when `path`
    is /proc/PID/exe."""
    try:
        info = analyze(path)
    except BinaryError as exc:
        raise UserError(str(exc).replace(path, shown or path)) from None
    except OSError as exc:
        # /proc/PID/exe of a process that exited meanwhile, or a file that went away.
        if path.startswith("/proc/") and not os.path.exists(os.path.dirname(path)):
            pid = path.split("/")[2]
            raise UserError(f"process {pid} exited while the tracer was reading its "
                            "program: nothing was traced") from None
        raise UserError(f"cannot read {shown or path}: {exc.strerror or exc}") from None
    info.shown = shown
    return info


def binary_of(target: str) -> BinaryInfo:
    """The binary of a running process (PID) or a file."""
    if target.isdigit():
        proc = inspect_process(int(target))
        return read_binary(proc.exe, shown=proc.exe_target)
    if os.path.exists(target):
        return read_binary(target)
    raise UserError(f"{target} is neither a running PID nor a file")


def plan_for(info: BinaryInfo, trace: TraceOptions) -> Plan:
    return compile_plan(info, trace.symbol, capture_args=not trace.no_args, probe=trace.probe)


def prepare_process(pid: int, trace: TraceOptions, tags: dict | None = None) -> Prepared:
    """A running process: its program read through /proc/PID/exe."""
    proc = inspect_process(pid)
    info = read_binary(proc.exe, shown=proc.exe_target)
    # /proc/PID/exe (info.path) reads the very file the process runs, even across mount
    # namespaces; the path it links to is only shown.
    plan = plan_for(info, trace)
    return Prepared(Target(pid=pid, name=proc.name, exe=proc.exe_target, tags=tags), info,
                    plan)


def prepare_command(command: tuple[str, ...], trace: TraceOptions) -> Prepared:
    """A command to start: its program found as a shell would."""
    program = shutil.which(command[0])
    if program is None:
        if os.path.isfile(command[0]):
            raise UserError(f"{command[0]} is not executable: chmod +x it, or name a program")
        raise UserError(f"command not found: {command[0]}")
    info = read_binary(os.path.realpath(program))
    plan = plan_for(info, trace)
    target = Target(argv=[program, *command[1:]], name=os.path.basename(program))
    return Prepared(target, info, plan)


def default_output(name: str, pid: int | str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"trace-{name}-{pid}-{stamp}.jsonl"
