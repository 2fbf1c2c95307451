"""Compile what to trace against one binary into a plan of addresses, roles and decoders."""

from __future__ import annotations

import re

from tracer.binary.analyze import find_functions, nearest_names
from tracer.binary.disasm import go_post_prologue, native_entry, return_addresses
from tracer.binary.model import BinaryInfo, Function
from tracer.errors import UserError
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

# controller-runtime's Reconciler: `func (r *T) Reconcile(ctx, req) (Result, error)`. Its own
# wrappers (reconcile.Func, the internal Controller) also have a Reconcile method and would
# count every call twice; compiler-made method values ("-fm") are not methods at all.
CONTROLLER_RUNTIME = "controller-runtime"
CR_RECONCILE = re.compile(r"\.\(\*?[\w.\[\]]+\)\.Reconcile$")
CR_EXCLUDE = re.compile(r"^sigs\.k8s\.io/controller-runtime/|-fm$")

MAX_FUNCTIONS = 200


def is_cr_reconcile(name: str) -> bool:
    return bool(CR_RECONCILE.search(name)) and not CR_EXCLUDE.search(name)


def select_functions(info: BinaryInfo, symbol: str | None) -> tuple[str, list[Function]]:
    if symbol is None:
        if info.language != "go":
            raise UserError(
                f"{info.path} is not a Go binary: name the function to trace with --symbol REGEX "
                f"(list them with `tracer symbols {info.path}`)"
            )
        found = [f for f in info.functions if is_cr_reconcile(f.name)]
        if not found:
            near = ", ".join(nearest_names(info, "Reconcile")) or "none"
            raise UserError(
                f"no controller-runtime Reconcile method in {info.path} (nearest: {near}); "
                "name the function with --symbol REGEX"
            )
        return CONTROLLER_RUNTIME, found
    found = find_functions(info, symbol)
    if not found:
        near = ", ".join(nearest_names(info, symbol)) or "none"
        raise UserError(f"no function matches {symbol!r} in {info.path}; nearest: {near}")
    if len(found) > MAX_FUNCTIONS:
        raise UserError(
            f"{symbol!r} matches {len(found)} functions (at most {MAX_FUNCTIONS}): "
            "make the regex narrower, e.g. anchor it with $"
        )
    return "symbol", found


def compile_plan(info: BinaryInfo, symbol: str | None = None, capture_args: bool = True) -> Plan:
    if info.language != "go" and not info.has_symtab:
        raise UserError(
            f"{info.path} is stripped and is not a Go binary: its functions have no names to "
            "trace; use a build with a symbol table"
        )
    probe, functions = select_functions(info, symbol)
    plan = Plan(
        binary=info.path,
        language="go" if info.language == "go" else "native",
        probe=probe,
        functions=[f.name for f in functions],
        points=[],
        pie=info.pie,
        capture_args=capture_args,
    )
    if info.language == "go":
        _compile_go(info, functions, plan)
    else:
        _compile_native(info, functions, plan)
    return plan


def _exits(info: BinaryInfo, fn: Function, key: str, decode: str | None,
           plan: Plan) -> list[Point]:
    rets = return_addresses(info, fn)
    if not rets:
        plan.notes.append(f"no RET found in {fn.name}: its calls will be written as unfinished")
    return [Point(addr, fn.name, EXIT, key, decode) for addr in rets]


def _compile_go(info: BinaryInfo, functions: list[Function], plan: Plan) -> None:
    if info.go_goid_offset is None:
        raise UserError(
            f"{info.path} was built with {info.go_version or 'an unknown Go version'}, whose "
            "goroutine layout the tracer does not know and the binary has no DWARF to tell it"
        )
    plan.go_goid_offset = info.go_goid_offset
    plan.go_types_base = info.go_types_base
    for fn in functions:
        cr = fn.name.endswith(").Reconcile")
        # After the stack check: a breakpoint on the first instruction fires again when the
        # goroutine's stack grows and the function restarts.
        entry = go_post_prologue(info, fn)
        plan.points.append(Point(entry, fn.name, ENTRY, KEY_GOID, "cr-request" if cr else None))
        plan.points.extend(_exits(info, fn, KEY_GOID, "cr-result" if cr else None, plan))
    # A call that panics never returns; its goroutine's recovery is where it ends.
    by_name = {f.name: f for f in info.functions}
    gopanic = by_name.get("runtime.gopanic")
    recovery = by_name.get("runtime.recovery")
    if gopanic and recovery:
        plan.points.append(Point(go_post_prologue(info, gopanic), gopanic.name, PANIC, KEY_GOID,
                                 "go-panic"))
        plan.points.append(Point(go_post_prologue(info, recovery), recovery.name, RECOVERY,
                                 KEY_GOID_FROM_ARG, None))
    else:
        plan.notes.append("runtime.gopanic/recovery not found: panicking calls stay unfinished")


def _compile_native(info: BinaryInfo, functions: list[Function], plan: Plan) -> None:
    for fn in functions:
        plan.points.append(Point(native_entry(info, fn), fn.name, ENTRY, KEY_THREAD,
                                 "native-args"))
        plan.points.extend(_exits(info, fn, KEY_THREAD, "native-return", plan))
