"""The decoder contract's promise about errors (tracer/probes/decoders.py): a call that
returned an error is recorded with an error whatever can be read of it, on every backend's
path (registers and memory for gdb and Delve, fetched fields for uprobes). Memory that cannot
be read stands for an operator whose memory went away (it exited) or a damaged type."""

from __future__ import annotations

from tracer.binary.govalues import GoMemory
from tracer.probes import decoders
from tracer.session.pairing import decode_span


def unreadable(addr: int, size: int) -> bytes:
    raise OSError(5, "Input/output error")


def regs(**values: int):
    return lambda name: values.get(name, 0)


def status_of(exit_value) -> tuple[str, dict | None]:
    span: dict = {}
    decode_span(span, "go", ["ns", "obj"], exit_value, None, "cr-request", "cr-result")
    return ("error" if span["error"] else "ok"), span["error"]


def test_an_error_whose_type_cannot_be_read_is_an_error_from_registers():
    memory = GoMemory(unreadable, 0x400000, None)
    value = decoders.decode("cr-result", regs(rax=0, rbx=0, rcx=0x7000, rdi=0x8000), memory)
    status, error = status_of(value)
    assert status == "error"
    assert error == {"type": "itab 0x7000 (unreadable)", "message": None}
    # No error: none.
    assert status_of(decoders.decode("cr-result", regs(), memory)) == ("ok", None)


def test_an_error_whose_type_cannot_be_read_is_an_error_from_uprobe_fields():
    fields = {"f0": 0, "f1": 0, "f2t": 0x7000, "f2s0": b"", "f2s0l": 0}
    memory = GoMemory(unreadable, 0x400000, None)
    value = decoders.from_fetched("cr-result", fields, memory, True,
                                  lambda word, kind: None)
    status, error = status_of(value)
    assert status == "error" and error["type"] == "itab 0x7000 (unreadable)"
    assert error["message"] is None
    fields["f2t"] = 0
    assert status_of(decoders.from_fetched("cr-result", fields, memory, True,
                                           lambda word, kind: None)) == ("ok", None)


def test_uprobe_fetch_args_follow_the_table():
    """Each field of a decoder becomes the fetch-args of its kind, registers as tracefs names
    them; the object's strings are read through its pointer at their offsets."""
    args = decoders.fetchargs("cr-object")
    assert args == ["f0l=+72(%di):s64", "f0=+0(+64(%di)):u64[32]",
                    "f1l=+40(%di):s64", "f1=+0(+32(%di)):u64[32]"]
    priority = decoders.fetchargs("cr-result-priority", decoders.STD_ERROR_SLOTS)
    assert "f2t=%di:u64" in priority and "f3p=%cx:u64" in priority
