"""The one place where text from outside becomes text on a terminal.

Object names, error messages, process and symbol names, paths, probe files: anyone who can
create a Kubernetes object or write a status can choose those bytes. Before they reach a
terminal every control character is made visible (`\\x1b`, `\\n`, `\\r`, `\\x9b`, `\\u202e`),
so no escape sequence is interpreted (window title, clipboard, links, clearing the screen) and
no newline forges an output line; and for rich, text goes in as `Text` objects, never as
markup, so `[link=...]` or `[/]` is shown as typed. The trace file itself keeps the exact
bytes (JSON escapes them): only what is shown is changed.
"""

from __future__ import annotations

import re

import click

# C0 controls, DEL, C1 controls (0x9b is CSI on 8-bit terminals), the Unicode line and
# paragraph separators, the bidirectional overrides and isolates ("Trojan source"), and lone
# surrogates (valid in JSON, unencodable on a terminal).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object) -> str:
    """`text` with every control character shown as an escape; anything else unchanged."""
    text = text if isinstance(text, str) else str(text)
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def echo(message: object = "", err: bool = False) -> None:
    """click.echo of a line that holds outside text: one line, inert."""
    click.echo(visible(message), err=err)


def text(value: object, style: str | None = None):
    """A rich Text of outside text: never parsed as markup, controls made visible."""
    from rich.text import Text

    return Text(visible(value), style=style or "")


def safe_table(*args, **kwargs):
    """A rich Table whose string cells and title are outside text (see `text`)."""
    from rich.table import Table

    class SafeTable(Table):
        def add_row(self, *renderables, **options):
            cells = [text(cell) if isinstance(cell, str) else cell for cell in renderables]
            return super().add_row(*cells, **options)

    title = kwargs.get("title")
    if isinstance(title, str):
        kwargs["title"] = text(title, kwargs.get("title_style"))
    return SafeTable(*args, **kwargs)
