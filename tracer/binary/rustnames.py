"""Rust symbol names as Rust writes them."""

from __future__ import annotations

from pydemumble import demangle


def demangled(name: str) -> str:
    """Rust symbols (legacy `_ZN..17h<hash>E` and v0 `_R..`) as Rust writes them, hash-free."""
    if name.startswith(("_ZN", "_R")):
        return demangle(name)
    return name
