"""Output files that are either whole or absent: written to a temporary file, then renamed.

A failed or interrupted export must never leave a half-written file that looks like a good
one. The temporary file sits in the destination folder so the rename is atomic (same
filesystem) and is created mode 0600, like trace files: exports hold the same object names.

No file the tracer writes follows a symbolic link or truncates a file in place: each is made
under a fresh name (O_EXCL, O_NOFOLLOW, 0600) and renamed over the output. An existing output
is replaced only if it is a file the tracer writes there (a trace, a chrome export, ...), or
with --force.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator

from tracer.errors import UserError

STDOUT = "-"


def _first_bytes(path: str, size: int = 65536) -> bytes | None:
    """The start of the regular file at `path`, read without following a link; None if it
    cannot be read that way."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def is_trace(first: bytes) -> bool:
    """A tracer trace file's start: a JSON header line (also the agent's stream copy)."""
    line = first.split(b"\n", 1)[0]
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(record, dict) and record.get("type") == "header"


def starts_with(*prefixes: bytes) -> Callable[[bytes], bool]:
    return lambda first: first.startswith(prefixes)


def check_output(path: str, label: str = "the output", force: bool = False,
                 ours: Callable[[bytes], bool] = is_trace) -> str:
    """Refuse, before any work, an output that cannot be written; `label` names it the way
    the user gave it (`--output`, `--causes-out`).

    An existing file is replaced (never written through) only when `ours` recognises its
    start as a file the tracer writes there, or with --force: a link planted at a guessable
    name, or somebody's file given by mistake, is left alone."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"the folder of {label} {path} does not exist: create it first")
    if os.path.isdir(path) and not os.path.islink(path):
        raise UserError(f"{label} {path} is a folder: give a file name")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {parent}: choose another {label.lstrip('-')}")
    try:
        st = os.lstat(path)
    except OSError:
        return path  # nothing there yet
    if force:
        return path
    if stat.S_ISLNK(st.st_mode):
        raise UserError(f"{label} {path} is a symbolic link: the tracer never writes through "
                        "one; choose another name, or --force to replace the link itself "
                        "(never what it points to)")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{label} {path} exists and is not a regular file: choose another name "
                        "(--force replaces it)")
    first = _first_bytes(path)
    if st.st_size and (first is None or not ours(first)):
        raise UserError(f"{label} {path} exists and is not a file the tracer wrote: choose "
                        "another name, or --force to replace it")
    return path


def create_private(path: str) -> int:
    """A new, empty file at `path`, mode 0600, open for writing; returns its descriptor.

    Made under a fresh name in the same folder (O_CREAT | O_EXCL | O_NOFOLLOW, as mkstemp
    does) and renamed over `path`: whatever was there (a file, a link) is replaced, never
    written through or truncated, and the file is the tracer's own from its first byte."""
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.",
                               suffix=".part")
    try:
        os.fchmod(fd, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        _remove(tmp)
        raise
    return fd


@contextlib.contextmanager
def atomic_path(path: str, force: bool = False,
                ours: Callable[[bytes], bool] = is_trace) -> Iterator[str]:
    """A temporary path to write (mode 0600, created with O_EXCL and O_NOFOLLOW); renamed to
    `path` only if the block succeeds. The rename replaces whatever entry is at `path` and
    never follows a link there."""
    check_output(path, force=force, ours=ours)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.",
                                   suffix=".part")
    except OSError as exc:
        raise UserError(f"cannot write to {parent}: {exc.strerror}") from None
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def open_output(path: str, newline: str | None = None, force: bool = False,
                ours: Callable[[bytes], bool] = is_trace) -> Iterator:
    """A text file to write, atomically; `-` is standard output."""
    if path == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_path(path, force, ours) as tmp, \
            open(tmp, "w", encoding="utf-8", newline=newline) as f:
        yield f


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
