"""The decoders kube-controller-manager's probe adds (tracer/probes/decoders.py): what each
reads, from registers (gdb, Delve) and from uprobe fetch-args, and the span fields the pairer
makes of them. No process: fake registers and memory."""

from __future__ import annotations

from tracer.probes import decoders
from tracer.session.pairing import decode_span

ERROR = ["*errors.StatusError", 'pods "x" is forbidden', None]


class FakeMemory:
    """Strings at fake addresses; an error for one (itab, data) pair."""

    def __init__(self, strings: dict[int, str], capture_args: bool = True) -> None:
        self.strings = strings
        self.capture_args = capture_args

    def string(self, ptr: int, length: int, limit: int) -> str:
        return self.strings[ptr][:min(length, limit)]

    def iface_error(self, itab: int, data: int) -> list:
        assert (itab, data) == (0x1000, 0x2000)
        return ERROR


def regs(**values: int):
    return lambda name: values.get(name, 0xDEAD)


def test_second_error_reads_the_error_after_a_one_register_result():
    """(forget bool, err error): the bool in RAX, the error in RBX/RCX."""
    mem = FakeMemory({})
    value = decoders.decode("go-second-error", regs(rax=1, rbx=0x1000, rcx=0x2000), mem)
    assert value == ERROR
    assert decoders.decode("go-second-error", regs(rax=1, rbx=0, rcx=0), mem) is None
    assert decoders.named("go-second-error", value) == {"error": ERROR}
    span: dict = {}
    decode_span(span, "go", "ns/job-1", value, None, "go-key", "go-second-error")
    assert span["key"] == "ns/job-1"
    assert span["request"] == {"namespace": "ns", "name": "job-1"}
    assert span["error"] == {"type": ERROR[0], "message": ERROR[1]}
    assert span["result"] is None


def test_namespace_name_reads_two_strings_after_the_receiver():
    mem = FakeMemory({0x10: "team-a", 0x20: "data-claim"})
    value = decoders.decode("go-namespace-name",
                            regs(rax=0x99, rbx=0x10, rcx=6, rdi=0x20, rsi=10), mem)
    assert value == ["team-a", "data-claim"]
    span: dict = {}
    decode_span(span, "go", value, None, None, "go-namespace-name", "go-error")
    assert span["request"] == {"namespace": "team-a", "name": "data-claim"}
    assert span["error"] is None
    # Names only: nothing is read with --no-args.
    assert decoders.decode("go-namespace-name", regs(), FakeMemory({}, False)) is None


def test_probe_files_may_name_them():
    assert "go-second-error" in decoders.EXIT_DECODERS["go"]
    assert "go-namespace-name" in decoders.ENTRY_DECODERS["go"]


def test_uprobe_fetch_args_read_the_same_registers():
    args = decoders.fetchargs("go-second-error")
    assert args[0] == "f0t=%bx:u64"
    assert args[1:] == ["f0s0l=+8(%cx):s64", "f0s0=+0(+0(%cx)):u64[32]"]
    assert decoders.fetchargs("go-namespace-name") == [
        "f0l=%cx:s64", "f0=+0(%bx):u64[32]", "f1l=%si:s64", "f1=+0(%di):u64[32]"]
    fetched = {"f0l": 6, "f0": b"team-a" + bytes(250), "f1l": 10, "f1": b"data-claim" + bytes(246)}
    assert decoders.from_fetched("go-namespace-name", fetched, None, True,
                                 lambda word, kind: None) == ["team-a", "data-claim"]
    # No error: a nil itab.
    assert decoders.from_fetched("go-second-error", {"f0t": 0}, None, True,
                                 lambda word, kind: None) is None
