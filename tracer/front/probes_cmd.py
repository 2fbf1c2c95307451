"""`tracer probes`: the probe files the tracer knows, and which of them fit a binary."""

from __future__ import annotations

import os
import sys

import click

from tracer.binary.model import BinaryInfo
from tracer.errors import UserError
from tracer.front.prepare import binary_of
from tracer.probes import decoders, library
from tracer.probes.plan import ENTRY, EXIT
from tracer.probes.spec import KIND_RUST_ASYNC, ProbeSpec
from tracer.terminal import echo


@click.group()
def probes() -> None:
    """Probe files: what a framework's or an operator's reconcile looks like (docs/probes.md).

    The tracer reads them from $TRACER_PROBE_PATH (folders, colon-separated), then from the
    probes it ships; --probe NAME|FILE on a tracing command picks one."""


def _shown(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("../..") else path


def _describe_function(spec) -> str:
    text = f"{spec.role:<9} {spec.match.pattern}"
    if spec.exclude is not None:
        text += f"  (not {spec.exclude.pattern})"
    if spec.kind == KIND_RUST_ASYNC:
        text += "  [rust-async"
        if spec.drop is not None:
            text += f", drop {spec.drop.pattern}"
        text += "]"
    captures = [f"{where} {name}" for where, name in (("entry", spec.entry), ("exit", spec.exit))
                if name]
    if captures:
        text += "  (" + ", ".join(captures) + ")"
    return text


@probes.command("list")
def list_probes() -> None:
    """Every known probe: name, file, what it matches, description."""
    found = library.load_all()
    if not found:
        raise UserError("no probe files found (looked in: "
                        + ", ".join(str(d) for d in library.search_dirs()) + ")")
    for probe in sorted(found, key=lambda p: p.name):
        kind = "operator-specific" if probe.specific else "generic"
        echo(f"{probe.name}  {_shown(probe.path)}  ({probe.language}, {kind})")
        if probe.description:
            echo(f"    {probe.description}")
        for spec in probe.functions:
            echo(f"    {_describe_function(spec)}")


def _facts(info: BinaryInfo) -> str:
    facts = [info.language]
    if info.go_version:
        facts.append(info.go_version)
    facts.append("symbols" if info.has_symtab else "stripped")
    facts.append("DWARF" if info.has_dwarf else "no DWARF")
    if info.language == "go":
        facts.append(f"goroutine layout from {info.go_goid_source}" if info.go_goid_offset
                     is not None else "goroutine layout unknown")
    return ", ".join(facts)


def _missing(probe: ProbeSpec, info: BinaryInfo) -> list[str]:
    """What keeps a matching probe from tracing this binary ("missing: ..."), or what it
    will do without ("note: ...")."""
    missing = []
    if info.language == "go" and info.go_goid_offset is None:
        missing.append(f"missing: goroutine layout: {info.go_version or 'this Go version'} is "
                       "not in the tracer's table and the binary has no DWARF to tell it")
    if info.language != "go" and not info.has_symtab:
        missing.append("missing: symbols: the binary is stripped and not Go, its functions "
                       "have no names")
    elif any(f.kind == KIND_RUST_ASYNC for f in probe.functions) and not info.has_dwarf:
        missing.append("note: no DWARF: the reconciled object and the result are not "
                       "decoded (the notes below say what else this build cannot give)")
    return missing


@probes.command("check")
@click.argument("target")
@click.option("--probe", "-p", "only", metavar="NAME|FILE", help="Check this probe only.")
def check(target: str, only: str | None) -> None:
    """Which probes match the functions of a process (PID) or binary, and what is missing.

    The probe marked * is the one a tracing command would choose. Exit status 1 when no
    probe matches."""
    info = binary_of(target)
    probes_found = [library.resolve(only)] if only else library.load_all()
    best = library.choose(info, probes_found)
    echo(f"# {info.name}: {_facts(info)}")
    for probe in sorted(probes_found, key=lambda p: (p is not (best and best.probe), p.name)):
        m = library.match(probe, info)
        mark = "*" if best is not None and probe is best.probe else " "
        head = f"{mark} {probe.name}  {_shown(probe.path)}"
        if probe.language != library.language_of(info):
            echo(f"{head}: for {probe.language} code, {info.name} is "
                       f"{library.language_of(info)}")
            continue
        if not m.reconciles:
            echo(f"{head}: no reconcile function matches")
        else:
            echo(f"{head}: {len(m.reconciles)} reconcile function(s)"
                       + (f", {len(m.others)} step/end function(s)" if m.others else ""))
        for spec in probe.functions:
            from tracer.probes import rust_async

            drops: list[str] = []
            if spec.kind == KIND_RUST_ASYNC:
                names, drops = rust_async.matching_parts(info, spec)
            else:
                names = list(dict.fromkeys(f.name for f in library.call_matches(info, spec)))
            if not names:
                echo(f"    {spec.role:<9} none match {spec.match.pattern}")
            for name in names:
                echo(f"    {spec.role:<9} {name}")
            for name in drops:
                echo(f"    {'end':<9} {name}")
        if m.reconciles or (info.language != "go" and not info.has_symtab):
            for item in _missing(probe, info):
                echo(f"    {item}")
    if best is None:
        sys.exit(1)
    _decoded(info, best.probe)


def _decoded(info: BinaryInfo, probe: ProbeSpec) -> None:
    """What the chosen probe really traces in this binary and which fields it decodes (each
    function checked against its signature), with the plan's notes."""
    from tracer.probes.compile import compile_plan

    try:
        plan = compile_plan(info, probe=probe)
    except UserError as exc:
        echo(f"  {probe.name} cannot trace it: {exc}")
        return
    echo(f"  traced with {probe.name}:")
    for function in plan.functions:
        points = [p for p in plan.points if p.function == function]
        entry = next((p.decode for p in points if p.role == ENTRY), None)
        exit_ = next((p.decode for p in points if p.role == EXIT), None)
        echo(f"    {function}")
        echo(f"      entry: {_fields(entry)}; return: {_fields(exit_)}")
    for note in plan.notes:
        if note != plan.choice:
            echo(f"    note: {note}")


def _fields(decoder: str | None) -> str:
    if decoder is None:
        return "times only"
    fields = [f.name for f in decoders.DECODERS[decoder].fields] \
        if decoder in decoders.DECODERS else [decoder]
    return f"{', '.join(fields)} ({decoder})"
