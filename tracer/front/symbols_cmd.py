"""`tracer symbols TARGET [REGEX]`: the functions of a process or binary that could be
traced."""

from __future__ import annotations

import click

from tracer.binary.analyze import find_functions, nearest_names
from tracer.errors import UserError
from tracer.front.prepare import binary_of
from tracer.probes.library import choose as choose_probe
from tracer.terminal import echo


@click.command()
@click.argument("target")
@click.argument("regex", required=False)
def symbols(target: str, regex: str | None) -> None:
    """List the functions of a process (PID) or binary that could be traced.

    Marks with * the reconcile functions traced by default (the best-matching probe's, named
    in the first line) and with + its steps."""
    info = binary_of(target)
    functions = find_functions(info, regex) if regex else info.functions
    if regex and not functions:
        near = ", ".join(nearest_names(info, regex)) or "none"
        raise UserError(f"no function matches {regex!r} in {info.name}; nearest: {near}")
    facts = [info.language]
    if info.go_version:
        facts.append(info.go_version)
    facts.append("stripped" if not info.has_symtab else "symbols")
    facts.append("DWARF" if info.has_dwarf else "no DWARF")
    best = choose_probe(info)
    if best is not None:
        facts.append(f"probe {best.probe.name}")
    reconciles = set(best.reconciles) if best else set()
    others = set(best.others) if best else set()
    echo(f"# {info.name}: {', '.join(facts)}; {len(functions)} function(s)")
    demangle = None
    if info.language == "rust":
        # As Rust writes them (and as rust-async probes match them), not mangled.
        from tracer.binary.rustnames import demangled as demangle
    for fn in functions:
        name = demangle(fn.name) if demangle else fn.name
        mark = "*" if {fn.name, name} & reconciles else "+" if {fn.name, name} & others else " "
        echo(f"{mark} 0x{fn.entry:x} {fn.end - fn.entry:6d} {name}")
