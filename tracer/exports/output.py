"""Output files that are either whole or absent: written to a temporary file, then renamed.

A failed or interrupted export must never leave a half-written file that looks like a good
one. The temporary file sits in the destination folder so the rename is atomic (same
filesystem) and is created mode 0600, like trace files: exports hold the same object names.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

from tracer.errors import UserError

STDOUT = "-"


def check_output(path: str, label: str = "the output") -> str:
    """Refuse, before any work, an output that cannot be written; `label` names it the way
    the user gave it (`--output`, `--causes-out`)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"the folder of {label} {path} does not exist: create it first")
    if os.path.isdir(path):
        raise UserError(f"{label} {path} is a folder: give a file name")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {parent}: choose another {label.lstrip('-')}")
    return path


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path to write; renamed to `path` only if the block succeeds."""
    check_output(path)
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
def open_output(path: str, newline: str | None = None) -> Iterator:
    """A text file to write, atomically; `-` is standard output."""
    if path == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as f:
        yield f


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
