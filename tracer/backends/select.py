"""Which backend a run uses: `--backend auto|gdb|dlv|uprobe`, its settings
(`--backend-option KEY=VALUE`), and why, for the trace header. The one place that maps the
names to the classes."""

from __future__ import annotations

from tracer.backends.base import Backend, BackendChoice, settings_of
from tracer.binary.model import BinaryInfo
from tracer.errors import UserError

CHOICES = ("auto", "gdb", "dlv", "uprobe")


def backend_class(name: str) -> type[Backend]:
    """The class behind a backend name (auto: gdb); imports only that backend."""
    if name in ("auto", "gdb"):
        from tracer.backends.gdb.backend import GdbBackend

        return GdbBackend
    if name == "dlv":
        from tracer.backends.dlv.backend import DlvBackend

        return DlvBackend
    if name == "uprobe":
        from tracer.backends.uprobe.backend import UprobeBackend

        return UprobeBackend
    raise UserError(f"unknown backend {name!r}: choose one of {', '.join(CHOICES)}")


def parse_options(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--backend-option KEY=VALUE` pairs as a dict."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"--backend-option {pair!r}: give KEY=VALUE")
        values[key.strip()] = value.strip()
    return values


def environment_help() -> str:
    """Where each backend finds its debugger, for --help."""
    parts = []
    for name in CHOICES[1:]:
        kind = backend_class(name)
        if kind.environment:
            parts.append(f"{name} runs {kind.environment}")
    return "; ".join(parts)


def options_help() -> str:
    """What every backend takes, for --help."""
    parts = []
    for name in CHOICES[1:]:
        settings = backend_class(name).settings
        if settings:
            parts.append(f"{name}: " + ", ".join(s.describe() for s in settings))
    return "; ".join(parts)


def choose_backend(name: str, info: BinaryInfo,
                   options: tuple[str, ...] | list[str] = ()) -> BackendChoice:
    """The backend and the reason in words. Checks that it can run, and its options, before
    anything is attached."""
    kind = backend_class(name)
    given = parse_options(options)
    settings_of(kind, given)  # refused now, not at the attach
    if name == "auto":
        why = ("auto: gdb, the default (any probe, no root needed; --backend uprobe costs "
               "less per hit but needs root)")
    else:
        why = f"{name}: asked for"
    extra = kind.check(info)
    return BackendChoice(kind, f"{why}; {extra}" if extra else why, given)
