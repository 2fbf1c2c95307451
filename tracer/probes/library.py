"""The probe files the tracer knows: where they live, naming one, and choosing the best one.

Search order: the folders in $TRACER_PROBE_PATH (colon-separated, the user's own probes),
then the shipped folder: `probes/` of a checkout, or `share/tracer/probes` of the
environment the package was installed into (pyproject's data-files put them there).
A probe of the same name found earlier wins.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tracer.binary.model import BinaryInfo, Function
from tracer.errors import UserError
from tracer.probes.spec import (
    KIND_RUST_ASYNC,
    ROLE_RECONCILE,
    FunctionSpec,
    ProbeSpec,
    load_probe,
)

ENV_PATH = "TRACER_PROBE_PATH"


def shipped_dir() -> Path | None:
    checkout = Path(__file__).resolve().parent.parent.parent / "probes"
    installed = Path(sys.prefix) / "share" / "tracer" / "probes"
    for folder in (checkout, installed):
        if folder.is_dir():
            return folder
    return None


def search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    shipped = shipped_dir()
    if shipped is not None:
        dirs.append(shipped)
    return dirs


def probe_files() -> list[Path]:
    files = []
    for folder in search_dirs():
        if folder.is_dir():
            files.extend(sorted(folder.glob("*.toml")))
    return files


def load_all() -> list[ProbeSpec]:
    """Every known probe, first of each name; a malformed file is an error (file:line)."""
    probes: dict[str, ProbeSpec] = {}
    for path in probe_files():
        probe = load_probe(path)
        probes.setdefault(probe.name, probe)
    return list(probes.values())


def resolve(name_or_file: str) -> ProbeSpec:
    """`--probe NAME|FILE`: a path when it looks like one, else a known probe's name."""
    if os.sep in name_or_file or name_or_file.endswith(".toml") or os.path.isfile(name_or_file):
        return load_probe(name_or_file)
    probes = load_all()
    for probe in probes:
        if probe.name == name_or_file:
            return probe
    known = ", ".join(sorted(p.name for p in probes)) or "none"
    raise UserError(f"no probe named {name_or_file!r} (known: {known}; "
                    "or give a probe file's path)")


@dataclass
class Match:
    probe: ProbeSpec
    reconciles: list[str]  # functions matched by a reconcile role
    others: list[str]  # steps and end markers


def language_of(info: BinaryInfo) -> str:
    return "go" if info.language == "go" else "native"


def function_names(info: BinaryInfo) -> list[tuple[Function, tuple[str, ...]]]:
    """Each function with the names a probe's regexes are tried on: its symbol, and for Rust
    its demangled name too (`controller::abi::wakeup`, without the hash)."""
    cached = info.__dict__.get("_probe_names")
    if cached is None:
        if info.language == "rust":
            from tracer.binary.rustnames import demangled

            cached = [(fn, (fn.name, d) if (d := demangled(fn.name)) != fn.name
                       else (fn.name,)) for fn in info.functions]
        else:
            cached = [(fn, (fn.name,)) for fn in info.functions]
        info.__dict__["_probe_names"] = cached
    return cached


_MATCHED: dict[tuple[int, int], tuple[BinaryInfo, FunctionSpec, list[Function]]] = {}


def call_matches(info: BinaryInfo, spec: FunctionSpec) -> list[Function]:
    """The functions a call-kind table names. Kept per (binary, table): choosing a probe,
    listing the others that match and compiling the chosen one ask the same question, and a
    large binary's 100,000+ names take seconds per regex."""
    key = (id(info), id(spec))
    found = _MATCHED.get(key)
    if found is None or found[0] is not info or found[1] is not spec:
        if len(_MATCHED) > 256:
            _MATCHED.clear()
        matched = [fn for fn, names in function_names(info)
                   if any(spec.matches(n) for n in names)]
        found = _MATCHED[key] = (info, spec, matched)
    return list(found[2])


def match(probe: ProbeSpec, info: BinaryInfo) -> Match:
    """Which of the binary's functions the probe names (no compiling)."""
    from tracer.probes import rust_async

    reconciles: list[str] = []
    others: list[str] = []
    if probe.language != language_of(info):
        return Match(probe, reconciles, others)
    for spec in probe.functions:
        if spec.kind == KIND_RUST_ASYNC:
            names, drops = rust_async.matching_parts(info, spec)
            others.extend(drops)  # the end markers of the polls' futures
        else:
            names = [f.name for f in call_matches(info, spec)]
        (reconciles if spec.role == ROLE_RECONCILE else others).extend(names)
    return Match(probe, _unique(reconciles), _unique(others))


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def choose(info: BinaryInfo, probes: list[ProbeSpec] | None = None) -> Match | None:
    """The best probe for a binary: specific over generic, then most reconcile functions."""
    found = [m for m in (match(p, info) for p in (probes if probes is not None else load_all()))
             if m.reconciles]
    if not found:
        return None
    return max(found, key=lambda m: (m.probe.specific, len(m.reconciles), m.probe.name))
