"""Probe files: what a framework's or an operator's reconcile looks like, read from TOML.

The format is documented in docs/probes.md; this module reads one file into a `ProbeSpec`
and reports anything wrong with the file's own path and line, so a person editing a probe
never has to read Python. Nothing here looks at a binary (see compile.py for that).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from tracer.errors import UserError
from tracer.probes import decoders

# What a matched function is to the trace.
ROLE_RECONCILE = "reconcile"  # one span per call: the unit the views and reports count
ROLE_STEP = "step"  # a child span of the reconcile open on the same goroutine/thread
ROLE_END = "end"  # a hit ends the reconcile open on the same key (no span of its own)
ROLES = (ROLE_RECONCILE, ROLE_STEP, ROLE_END)

# How calls are told apart.
KEY_GOROUTINE = "goroutine"
KEY_THREAD = "thread"
KEY_FUTURE = "future"  # Rust async: the future's address (see tracer.probes.rust_async)
KEYS = (KEY_GOROUTINE, KEY_THREAD, KEY_FUTURE)

KIND_CALL = "call"  # entry and every return of one function
KIND_RUST_ASYNC = "rust-async"  # an async fn: polls of its future, ended by completion or drop
KINDS = (KIND_CALL, KIND_RUST_ASYNC)

LANGUAGES = ("go", "native")

# Decoders a probe file may name: the contract with the backends (tracer.probes.decoders).
ENTRY_DECODERS = decoders.ENTRY_DECODERS
EXIT_DECODERS = decoders.EXIT_DECODERS

TOP_KEYS = {"name", "description", "language", "specific", "function"}
FUNCTION_KEYS = {"match", "exclude", "role", "key", "entry", "exit", "kind", "poll", "drop",
                 "description"}


@dataclass(frozen=True)
class FunctionSpec:
    """One `[[function]]` table of a probe file."""

    match: re.Pattern[str]  # re.search on the function's full symbol name
    role: str = ROLE_RECONCILE
    key: str = KEY_GOROUTINE
    kind: str = KIND_CALL
    exclude: re.Pattern[str] | None = None
    entry: str | None = None  # decoder at entry
    exit: str | None = None  # decoder at every return
    # rust-async only: the poll function of the future (defaults to `match`) and the end
    # marker, `core::ptr::drop_in_place<...>` of the future, for builds that inline the poll.
    poll: re.Pattern[str] | None = None
    drop: re.Pattern[str] | None = None
    description: str = ""
    line: int = 0  # where the table starts in its file, for messages

    def matches(self, name: str) -> bool:
        return bool(self.match.search(name)) and not (self.exclude and self.exclude.search(name))


@dataclass
class ProbeSpec:
    name: str
    path: str
    language: str
    description: str = ""
    specific: bool = True  # framework- or operator-specific: preferred over generic probes
    functions: list[FunctionSpec] = field(default_factory=list)

    @property
    def reconciles(self) -> list[FunctionSpec]:
        return [f for f in self.functions if f.role == ROLE_RECONCILE]


class ProbeFileError(UserError):
    """A probe file that cannot be used: one line with its path, line and what is wrong."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


def load_probe(path: str | Path) -> ProbeSpec:
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no such probe file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read probe file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        message = getattr(exc, "msg", None) or re.sub(r"\s*\(at line \d+.*\)$", "", str(exc))
        raise ProbeFileError(path, line, f"not valid TOML: {message}") from None
    return _parse(path, text, data)


def _line_from_message(message: str) -> int | None:
    # Python 3.11's tomllib puts the position in the message only.
    found = re.search(r"at line (\d+)", message)
    return int(found.group(1)) if found else None


class _Lines:
    """Where a key sits in the file: tomllib gives values, not positions."""

    HEADER = re.compile(r"^\s*\[\[\s*function\s*\]\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.tables = [i + 1 for i, line in enumerate(self.lines) if self.HEADER.match(line)]

    def table(self, index: int | None) -> int | None:
        if index is None:
            return None
        return self.tables[index] if index < len(self.tables) else None

    def key(self, key: str, index: int | None = None) -> int | None:
        start = (self.table(index) or 1) if index is not None else 1
        end = (self.table(index + 1) or len(self.lines) + 1) if index is not None else (
            self.tables[0] if self.tables else len(self.lines) + 1)
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(start, end):
            if pattern.match(self.lines[number - 1]):
                return number
        return self.table(index)


def _parse(path: str, text: str, data: dict) -> ProbeSpec:
    lines = _Lines(text)

    def fail(message: str, key: str | None = None, index: int | None = None) -> NoReturn:
        line = lines.key(key, index) if key else lines.table(index)
        raise ProbeFileError(path, line, message)

    for key in data:
        if key not in TOP_KEYS:
            fail(f"unknown key {key!r} (expected one of: {', '.join(sorted(TOP_KEYS))})", key)
    name = _string(data, "name", fail) or Path(path).stem
    language = _string(data, "language", fail)
    if language is None:
        fail("missing key 'language' (go or native)", None)
    if language not in LANGUAGES:
        fail(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}", "language")
    specific = data.get("specific", True)
    if not isinstance(specific, bool):
        fail("specific must be true or false", "specific")
    tables = data.get("function")
    if not isinstance(tables, list) or not tables:
        fail("no [[function]] table: a probe needs at least one function to match")
    probe = ProbeSpec(name=name, path=path, language=language, specific=specific,
                      description=_string(data, "description", fail) or "")
    for index, table in enumerate(tables):
        probe.functions.append(_function(table, index, language, lines, fail))
    if not probe.reconciles:
        fail("no function with role = \"reconcile\": steps and end markers need a reconcile "
             "to belong to", None, 0)
    return probe


def _string(table: dict, key: str, fail, index: int | None = None) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        fail(f"{key} must be a string", key, index)
    return value


def _regex(table: dict, key: str, fail, index: int) -> re.Pattern[str] | None:
    """A probe file's regex, compiled within limits (see LimitedPattern): a probe file may
    come from anyone, and its regex is matched against every function name of a binary."""
    import regex

    text = _string(table, key, fail, index)
    if text is None:
        return None
    if len(text) > MAX_REGEX_CHARS:
        fail(f"{key} is {len(text):,} characters long: a probe's regex may have at most "
             f"{MAX_REGEX_CHARS:,} ({short_quote(text)})", key, index)
    if _nesting(text) > MAX_REGEX_NESTING:
        fail(f"{key} nests groups more than {MAX_REGEX_NESTING} deep ({short_quote(text)})",
             key, index)
    try:
        compiled = regex.compile(text)
    except (regex.error, RecursionError, OverflowError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        fail(f"{key} is not a valid regular expression: {reason}", key, index)
    return LimitedPattern(text, compiled, lambda message: fail(message, key, index))


def _choice(table: dict, key: str, choices, default, fail, index: int):
    value = _string(table, key, fail, index)
    if value is None:
        return default
    if value not in choices:
        fail(f"{key} must be one of {', '.join(choices)}, not {value!r}", key, index)
    return value


def _function(table: dict, index: int, language: str, lines: _Lines, fail) -> FunctionSpec:
    if not isinstance(table, dict):
        fail("[[function]] must be a table", None, index)
    for key in table:
        if key not in FUNCTION_KEYS:
            fail(f"unknown key {key!r} in [[function]] (expected one of: "
                 f"{', '.join(sorted(FUNCTION_KEYS))})", key, index)
    if "match" not in table:
        fail("missing key 'match' (a regular expression on the function's name)", None, index)
    match = _regex(table, "match", fail, index)
    kind = _choice(table, "kind", KINDS, KIND_CALL, fail, index)
    role = _choice(table, "role", ROLES, ROLE_RECONCILE, fail, index)
    default_key = KEY_FUTURE if kind == KIND_RUST_ASYNC else (
        KEY_GOROUTINE if language == "go" else KEY_THREAD)
    key = _choice(table, "key", KEYS, default_key, fail, index)
    if key == KEY_GOROUTINE and language != "go":
        fail("key = \"goroutine\" needs language = \"go\"", "key", index)
    if kind == KIND_RUST_ASYNC:
        if language != "native":
            fail("kind = \"rust-async\" needs language = \"native\"", "kind", index)
        if key != KEY_FUTURE:
            fail("kind = \"rust-async\" is keyed by the future: key = \"future\"", "key", index)
    elif key == KEY_FUTURE:
        fail("key = \"future\" needs kind = \"rust-async\"", "key", index)
    for where, known in (("entry", ENTRY_DECODERS), ("exit", EXIT_DECODERS)):
        value = _string(table, where, fail, index)
        # rust-async decoders belong to tracer.probes.rust_async, which checks its own.
        if value is not None and kind == KIND_CALL and value not in known[language]:
            fail(f"{where} decoder {value!r} is not one for {language} code (known: "
                 f"{', '.join(known[language])})", where, index)
    for key_name in ("poll", "drop"):
        if key_name in table and kind != KIND_RUST_ASYNC:
            fail(f"{key_name} is for kind = \"rust-async\" only", key_name, index)
    if role == ROLE_END and (table.get("entry") or table.get("exit")):
        fail("an end marker captures nothing: remove entry/exit", "role", index)
    return FunctionSpec(
        match=match, role=role, key=key, kind=kind,
        exclude=_regex(table, "exclude", fail, index),
        entry=table.get("entry"), exit=table.get("exit"),
        poll=_regex(table, "poll", fail, index), drop=_regex(table, "drop", fail, index),
        description=_string(table, "description", fail, index) or "",
        line=lines.table(index) or 0,
    )


# Limits on a probe file's regexes. Real ones are a few dozen characters; matching uses the
# `regex` engine, whose matches take a timeout, against a budget per pattern for the whole
# process (a binary of 111,000 functions takes about 0.1 s to scan with a sane pattern).
MAX_REGEX_CHARS = 1_000
MAX_REGEX_NESTING = 50
REGEX_BUDGET_S = 5.0


def short_quote(text: str, limit: int = 60) -> str:
    """At most `limit` characters of outside text for a message, with its length if cut."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _nesting(text: str) -> int:
    """How deep unescaped parentheses nest (an upper bound: classes are not parsed)."""
    depth = deepest = 0
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth = max(0, depth - 1)
    return deepest


class LimitedPattern:
    """A compiled probe regex whose search() may spend REGEX_BUDGET_S in all: one with
    catastrophic backtracking ends in a one-line error naming the probe file, not a hang."""

    def __init__(self, text: str, compiled, fail) -> None:
        self.pattern = text
        self._rx = compiled
        self._fail = fail
        self._spent = 0.0

    def search(self, string: str, *args):
        import time

        remaining = REGEX_BUDGET_S - self._spent
        start = time.monotonic()
        try:
            return self._rx.search(string, *args, timeout=max(remaining, 0.001))
        except TimeoutError:
            self._fail(f"the regular expression {short_quote(self.pattern)} took more than "
                       f"{REGEX_BUDGET_S:g} s to match the binary's function names "
                       "(catastrophic backtracking): simplify it")
        finally:
            self._spent += time.monotonic() - start

    def __repr__(self) -> str:
        return f"LimitedPattern({short_quote(self.pattern)})"
