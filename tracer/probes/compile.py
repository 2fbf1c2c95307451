"""Compile a probe (a probe file, or an ad-hoc --symbol regex) against one binary into a plan
of addresses, roles, keys and decoders."""

from __future__ import annotations

import re

from tracer.binary.analyze import find_functions, nearest_names
from tracer.binary.disasm import go_post_prologue, native_entry, return_addresses
from tracer.binary.model import BinaryInfo, Function
from tracer.errors import UserError
from tracer.probes import layouts, library, spec
from tracer.probes.plan import (
    ENTRY,
    EXIT,
    KEY_GOID,
    KEY_GOID_FROM_ARG,
    KEY_THREAD,
    PANIC,
    RECOVERY,
    Plan,
    Point,
)
from tracer.probes.spec import FunctionSpec, ProbeSpec

MAX_FUNCTIONS = 200


def _adhoc(info: BinaryInfo, symbol: str) -> list[tuple[Function, FunctionSpec]]:
    """`--symbol REGEX`: every matching function is a reconcile; a Go method with
    controller-runtime's name gets its decoders, native functions their first arguments."""
    found = find_functions(info, symbol)
    if not found:
        near = ", ".join(nearest_names(info, symbol)) or "none"
        raise UserError(f"no function matches {symbol!r} in {info.name}; nearest: {near}")
    if len(found) > MAX_FUNCTIONS:
        raise UserError(
            f"{symbol!r} matches {len(found)} functions (at most {MAX_FUNCTIONS}): "
            "make the regex narrower, e.g. anchor it with $"
        )
    pattern = re.compile(symbol)
    out = []
    for fn in found:
        if info.language != "go":
            fs = FunctionSpec(pattern, key=spec.KEY_THREAD, entry="native-args",
                              exit="native-return")
        elif fn.name.endswith(").Reconcile"):
            fs = FunctionSpec(pattern, entry="cr-request", exit="cr-result")
        else:
            fs = FunctionSpec(pattern)
        out.append((fn, fs))
    return out


def _from_probe(info: BinaryInfo, probe: ProbeSpec) -> list[tuple[Function, FunctionSpec]]:
    """Each function the probe's call-kind tables match, with the first table naming it."""
    lang = library.language_of(info)
    if probe.language != lang:
        raise UserError(f"probe {probe.name} ({probe.path}) is for {probe.language} code and "
                        f"{info.name} is {lang}")
    out: list[tuple[Function, FunctionSpec]] = []
    seen: set[str] = set()
    for fs in probe.functions:
        if fs.kind != spec.KIND_CALL:
            continue
        for fn in library.call_matches(info, fs):
            if fn.name not in seen:
                seen.add(fn.name)
                out.append((fn, fs))
    if len(out) > MAX_FUNCTIONS:
        raise UserError(f"probe {probe.name} matches {len(out)} functions in {info.name} (at "
                        f"most {MAX_FUNCTIONS}): make its regexes narrower ({probe.path})")
    return out


def compile_plan(info: BinaryInfo, symbol: str | None = None, capture_args: bool = True,
                 probe: str | ProbeSpec | None = None) -> Plan:
    """`probe` is a ProbeSpec, or a name or file for `tracer.probes.library.resolve`; with
    neither it nor `symbol`, the best-matching known probe is chosen (said in the notes)."""
    if info.language != "go" and not info.has_symtab:
        raise UserError(
            f"{info.name} is stripped and is not a Go binary: its functions have no names to "
            "trace; use a build with a symbol table"
        )
    if symbol is not None and probe is not None:
        raise UserError("give --probe or --symbol, not both")
    choice = None
    if symbol is not None:
        spec_probe = None
        name = "symbol"
        functions = _adhoc(info, symbol)
    else:
        if probe is None:
            spec_probe, choice = _choose(info)
        else:
            spec_probe = library.resolve(probe) if isinstance(probe, str) else probe
        name = spec_probe.name
        functions = _from_probe(info, spec_probe)
    plan = Plan(
        binary=info.path,
        language=library.language_of(info),
        probe=name,
        functions=[],
        points=[],
        pie=info.pie,
        capture_args=capture_args,
        probe_file=spec_probe.path if spec_probe else None,
    )
    if choice:
        plan.choice = choice
        plan.notes.append(choice)
    if info.language == "go":
        functions = layouts.resolve(info, functions, plan.notes)
        _compile_go(info, functions, plan)
    else:
        _compile_native(info, functions, plan)
    if spec_probe is not None:
        reconciles = [fn for fn, fs in functions if fs.role == spec.ROLE_RECONCILE]
        if not reconciles + _compile_async(info, spec_probe, plan):
            raise UserError(
                f"probe {spec_probe.name} matches no reconcile function in {info.name}; "
                f"see `tracer probes check {info.name}`")
    return plan


def _choose(info: BinaryInfo) -> tuple[ProbeSpec, str]:
    probes = library.load_all()
    best = library.choose(info, probes)
    if best is None:
        if info.language != "go":
            raise UserError(
                f"{info.name} is not a Go binary and no probe matches it: name the function "
                f"to trace with --symbol REGEX (list them with `tracer symbols {info.name}`)"
            )
        near = ", ".join(nearest_names(info, "Reconcile")) or "none"
        raise UserError(
            f"no controller-runtime Reconcile method in {info.name}, nor any other known "
            f"probe's functions (nearest: {near}); name the function with --symbol REGEX "
            "or a probe file with --probe FILE"
        )
    others = [m for m in (library.match(p, info) for p in probes)
              if m.reconciles and m.probe is not best.probe]
    said = (f"probe {best.probe.name} chosen: {len(best.reconciles)} reconcile function(s)"
            + (" (operator-specific)" if best.probe.specific else ""))
    if others:
        said += "; also matching: " + ", ".join(
            f"{m.probe.name} ({len(m.reconciles)})" for m in others)
    return best.probe, said


def _compile_async(info: BinaryInfo, probe: ProbeSpec, plan: Plan) -> list[str]:
    """The probe's rust-async tables, by tracer.probes.rust_async; returns the reconciles."""
    tables = [fs for fs in probe.functions if fs.kind == spec.KIND_RUST_ASYNC]
    if not tables:
        return []
    from tracer.probes.rust_async import compile_async

    reconciles = []
    for fs in tables:
        for name in compile_async(info, fs, plan):
            if name not in plan.functions:
                plan.functions.append(name)
            if fs.role == spec.ROLE_STEP:
                plan.steps.append(name)
            elif fs.role == spec.ROLE_RECONCILE:
                reconciles.append(name)
    return reconciles


def _exits(info: BinaryInfo, fn: Function, key: str, decode: str | None, span: str,
           plan: Plan) -> list[Point]:
    rets = return_addresses(info, fn)
    if not rets:
        plan.notes.append(f"no RET found in {fn.name}: its calls will be written as unfinished")
    return [Point(addr, fn.name, EXIT, key, decode, span) for addr in rets]


def _point_key(fs: FunctionSpec) -> str:
    return KEY_GOID if fs.key == spec.KEY_GOROUTINE else KEY_THREAD


def _add(plan: Plan, fn: Function, fs: FunctionSpec) -> None:
    plan.functions.append(fn.name)
    if fs.role == spec.ROLE_STEP:
        plan.steps.append(fn.name)


def _compile_go(info: BinaryInfo, functions: list[tuple[Function, FunctionSpec]],
                plan: Plan) -> None:
    if info.go_goid_offset is None:
        raise UserError(
            f"{info.name} was built with {info.go_version or 'an unknown Go version'}, whose "
            "goroutine layout the tracer does not know and the binary has no DWARF to tell it"
        )
    plan.go_goid_offset = info.go_goid_offset
    plan.go_types_base = info.go_types_base
    plan.go_error_slots = [list(slot) for slot in layouts.error_slots(info)]
    for fn, fs in functions:
        _add(plan, fn, fs)
        key = _point_key(fs)
        # After the stack check: a breakpoint on the first instruction fires again when the
        # goroutine's stack grows and the function restarts.
        entry = go_post_prologue(info, fn)
        plan.points.append(Point(entry, fn.name, ENTRY, key, fs.entry, fs.role))
        if fs.role != spec.ROLE_END:
            plan.points.extend(_exits(info, fn, key, fs.exit, fs.role, plan))
    # A call that panics never returns; its goroutine's recovery is where it ends.
    gopanic = info.function_named("runtime.gopanic")
    recovery = info.function_named("runtime.recovery")
    if gopanic and recovery:
        plan.points.append(Point(go_post_prologue(info, gopanic), gopanic.name, PANIC, KEY_GOID,
                                 "go-panic"))
        plan.points.append(Point(go_post_prologue(info, recovery), recovery.name, RECOVERY,
                                 KEY_GOID_FROM_ARG, None))
    else:
        plan.notes.append("runtime.gopanic/recovery not found: panicking calls stay unfinished")


def _compile_native(info: BinaryInfo, functions: list[tuple[Function, FunctionSpec]],
                    plan: Plan) -> None:
    for fn, fs in functions:
        _add(plan, fn, fs)
        plan.points.append(Point(native_entry(info, fn), fn.name, ENTRY, KEY_THREAD, fs.entry,
                                 fs.role))
        if fs.role != spec.ROLE_END:
            plan.points.extend(_exits(info, fn, KEY_THREAD, fs.exit, fs.role, plan))
