"""Which backend a run uses: `--backend auto|gdb|dlv`, and why, for the trace header."""

from __future__ import annotations

from collections.abc import Callable

from tracer.backends.base import Backend
from tracer.binary.model import BinaryInfo
from tracer.errors import UserError

CHOICES = ("auto", "gdb", "dlv", "uprobe")


def choose_backend(name: str, info: BinaryInfo) -> tuple[Callable[[], Backend], str]:
    """(factory, the reason in words). Checks that the backend can run before attaching."""
    from tracer.backends.gdb.backend import GdbBackend, find_gdb

    if name == "auto":
        find_gdb()
        return GdbBackend, "auto: gdb, the default (its in-process agent is the cheapest per hit)"
    if name == "gdb":
        find_gdb()
        return GdbBackend, "gdb: asked for"
    if name == "dlv":
        from tracer.backends.dlv.backend import DlvBackend, check_dlv

        return DlvBackend, "dlv: asked for; " + check_dlv(info)
    if name == "uprobe":
        from tracer.backends.uprobe.backend import UprobeBackend, check_uprobe

        return UprobeBackend, "uprobe: asked for; " + check_uprobe(info)
    raise UserError(f"unknown backend {name!r}: choose one of {', '.join(CHOICES)}")
