"""The Delve backend's pieces that need no process: decoders, version checks, messages."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from helpers import sample

from tracer.backends.dlv import backend as dlv_backend
from tracer.backends.dlv import decode
from tracer.backends.dlv.client import _exit_status_from, _go_version
from tracer.binary.analyze import analyze
from tracer.errors import UserError
from tracer.probes.compile import compile_plan


def var(name, kind, value="", flags=0, addr=0, type_="", children=None, unreadable=""):
    return {"name": name, "kind": kind, "value": value, "flags": flags, "addr": addr,
            "type": type_, "children": children or [], "unreadable": unreadable}


def request_arg(ns="ns-1", name="obj-2"):
    """ctrl.Request as Delve loads it: Request{NamespacedName{Namespace, Name}}."""
    inner = var("NamespacedName", decode.KIND_STRUCT, children=[
        var("Namespace", decode.KIND_STRING, ns), var("Name", decode.KIND_STRING, name)])
    return var("req", decode.KIND_STRUCT, flags=8 | decode.FLAG_FAKE_ADDRESS,
               children=[inner])


def result_args(requeue="false", after="0", error=None, err_addr=0x1000):
    res = var("res", decode.KIND_STRUCT, flags=decode.FLAG_RETURN, addr=0x2000, children=[
        var("Requeue", decode.KIND_BOOL, requeue), var("RequeueAfter", 2, after)])
    nil = var("", decode.KIND_INVALID, type_="void")
    err = var("err", decode.KIND_INTERFACE, flags=decode.FLAG_RETURN, addr=err_addr,
              type_="error", children=[error or nil])
    return [var("r", decode.KIND_PTR, flags=8), request_arg(), res, err]


class FakeMemory:
    """A little address space: an itab at 0x1000's target, a type descriptor, a name."""

    def __init__(self) -> None:
        self.mem: dict[int, bytes] = {}

    def put(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.mem[addr + i] = bytes([b])

    def read(self, addr: int, n: int) -> bytes:
        return b"".join(self.mem.get(addr + i, b"\0") for i in range(n))


def memory_with_error_type(name: str) -> decode.Memory:
    """The interface at 0x1000 holds itab 0x3000, whose type (0x4000) is a pointer type
    named `name` (types_base 0x8000, name at +0x10)."""
    fake = FakeMemory()
    fake.put(0x1000, struct.pack("<QQ", 0x3000, 0x5000))
    fake.put(0x3008, struct.pack("<Q", 0x4000))
    fake.put(0x4000 + 23, bytes([22]))  # kind pointer
    fake.put(0x4000 + 40, struct.pack("<i", 0x10))  # nameOff
    fake.put(0x4000 + 48, struct.pack("<Q", 0))  # elem: none, so no message offset
    fake.put(0x8010, bytes([0, len(name)]) + name.encode())
    return decode.Memory(fake.read, 0x8000, 0x98)


def test_request_by_name_finds_the_embedded_namespaced_name():
    assert decode.request_by_name([var("r", decode.KIND_PTR), request_arg()], True) == [
        "ns-1", "obj-2"]
    assert decode.request_by_name([request_arg()], False) is None
    with pytest.raises(decode.Undecodable):
        decode.request_by_name([var("x", decode.KIND_STRUCT)], True)
    bad = request_arg()
    bad["children"][0]["children"][0]["unreadable"] = "empty OP stack"
    with pytest.raises(decode.Undecodable):
        decode.request_by_name([bad], True)


def test_result_by_name_nil_error_and_constants():
    memory = memory_with_error_type("*errors.errorString")
    assert decode.result_by_name(result_args(), memory) == [False, 0, None]
    # Delve prints a value equal to a constant by the constant's name.
    assert decode.result_by_name(result_args("true", "Millisecond (1000000)"), memory) == [
        True, 1000000, None]
    assert decode.result_by_name(result_args(after="main.backoffBase (5000000)"),
                                 memory)[1] == 5000000


def test_result_by_name_error_type_from_the_itab_no_message_guessed():
    """A custom error type's first string is not its Error(): the message stays null."""
    memory = memory_with_error_type("*controllers.RetryableError")
    concrete = var("data", decode.KIND_PTR, type_="*example.com/op/controllers.RetryableError",
                   addr=0x1008, children=[var("", decode.KIND_STRUCT, addr=0x5000, children=[
                       var("Msg", decode.KIND_STRING, "busy", addr=0x5000),
                       var("Code", 2, "502", addr=0x5010)])])
    assert decode.result_by_name(result_args(error=concrete), memory) == [
        False, 0, ["*controllers.RetryableError", None, None]]
    # No memory address for the interface: Delve's name with the import path cut.
    got = decode.result_by_name(result_args(error=concrete, err_addr=0), memory)
    assert got[2] == ["*controllers.RetryableError", None, None]


def test_registers_like_the_gdb_agent():
    regs = decode.parse_registers([
        {"Name": "Rax", "Value": "0x0000000000000001"},
        {"Name": "Rbx", "Value": "0xffffffffffffffff"},
        {"Name": "Rcx", "Value": "0x0"}, {"Name": "Rdi", "Value": "0x0"},
        {"Name": "Rflags", "Value": "0x0000000000000246\t[PF ZF IF IOPL=0]"}])
    assert regs["rflags"] == 0x246
    memory = decode.Memory(lambda a, n: b"\0" * n, None, 0x98)
    assert memory.decode_registers("cr-result", regs) == [True, -1, None]


def test_shorten_type_and_versions():
    assert decode.shorten_type("*example.com/sample-operator/controllers.E") == "*controllers.E"
    assert decode.shorten_type("map[string]k8s.io/api/core/v1.Pod") == "map[string]v1.Pod"
    assert decode.shorten_type("*errors.errorString") == "*errors.errorString"
    assert _go_version("Go cmd/compile go1.27.3") == (1, 27, 3)
    assert _go_version("1.20.0") == (1, 20, 0)
    assert _exit_status_from("Process 12 has exited with status 3") == 3


def test_examine_reader_splits_long_reads():
    calls = []

    def call(method, Address, Length):  # noqa: N803 - Delve's parameter names
        calls.append((Address, Length))
        import base64
        return {"Mem": base64.b64encode(b"a" * Length).decode()}

    assert decode.examine_reader(call)(0x100, 2500) == b"a" * 2500
    assert calls == [(0x100, 1000), (0x100 + 1000, 1000), (0x100 + 2000, 500)]


# -- check_dlv: one line, before anything is attached -----------------------------------------
def test_check_dlv_refuses_what_delve_cannot_trace(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="not one: use --backend gdb"):
        dlv_backend.check_dlv(analyze(str(sample("c/c-operator"))))
    with pytest.raises(UserError, match="no DWARF"):
        dlv_backend.check_dlv(analyze(str(sample("go1.19/sample-operator-stripped"))))
    monkeypatch.setattr(dlv_backend, "dlv_version", lambda path: (1, 9, 0))
    with pytest.raises(UserError, match="too old"):
        dlv_backend.check_dlv(analyze(str(sample("go1.19/sample-operator"))))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("TRACER_CACHE", str(tmp_path))
    monkeypatch.delenv("TRACER_DLV", raising=False)
    with pytest.raises(UserError, match="not found: run scripts/setup"):
        dlv_backend.check_dlv(analyze(str(sample("go1.19/sample-operator"))))


def test_find_dlv_order(monkeypatch, tmp_path):
    """$TRACER_DLV, then the Delve scripts/setup builds into the cache, then PATH."""
    def fake(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return str(path)

    on_path = fake(tmp_path / "path" / "dlv")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv("TRACER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TRACER_DLV", raising=False)
    assert dlv_backend.find_dlv() == on_path
    pinned = fake(tmp_path / "cache" / f"dlv-{dlv_backend.PINNED}" / "bin" / "dlv")
    assert dlv_backend.pinned_dlv() == pinned
    assert dlv_backend.find_dlv() == pinned
    asked = fake(tmp_path / "mine" / "dlv")
    monkeypatch.setenv("TRACER_DLV", asked)
    assert dlv_backend.find_dlv() == asked
    monkeypatch.setenv("TRACER_DLV", str(tmp_path / "none"))
    with pytest.raises(UserError, match="TRACER_DLV=.* is not an executable"):
        dlv_backend.find_dlv()


def test_setup_builds_the_pinned_delve():
    """scripts/setup builds the very version find_dlv looks for."""
    setup = (Path(__file__).resolve().parents[2] / "scripts" / "setup").read_text()
    assert f"DLV_VERSION={dlv_backend.PINNED}\n" in setup
    assert 'DLV_DIR="$CACHE/dlv-$DLV_VERSION"' in setup
    assert "github.com/go-delve/delve/cmd/dlv@v$DLV_VERSION" in setup


def test_every_controller_runtime_decoder_can_be_read_by_name():
    """Both layouts of controller-runtime's Result (with Priority since v0.23) go through
    Delve's LoadArgs when values are read by name, not only the old one."""
    from tracer.backends.dlv.client import BY_NAME_LOAD
    from tracer.probes.decoders import RESULT_DECODERS

    assert set(BY_NAME_LOAD) == {"cr-request", *RESULT_DECODERS}
    assert all(BY_NAME_LOAD[d] is decode.EXIT_LOAD for d in RESULT_DECODERS)


def test_check_dlv_says_how_values_are_read():
    try:
        dlv_backend.find_dlv()
    except UserError:
        pytest.skip("dlv not installed")
    version = dlv_backend.dlv_version(dlv_backend.find_dlv())
    note = dlv_backend.check_dlv(analyze(str(sample("go1.27/sample-operator"))))
    if version[:2] < (1, 27):
        assert "values from registers" in note
    else:  # Delve 1.27 reads Go 1.27's DWARF 5
        assert "values by name on -gcflags=all=-N -l builds" in note
    assert "by name" in dlv_backend.check_dlv(analyze(str(sample("go1.19/sample-operator-debug"))))
    assert os.path.basename(dlv_backend.find_dlv()) == "dlv"


def test_a_breakpoint_never_sits_on_a_one_byte_push():
    """Delve rewinds a thread one byte past a breakpoint that takes a halt's SIGTRAP (see
    tracer/backends/dlv/placement.py): entries on `push rbp` move past it and report the
    stack pointer from before the push; RETs stay."""
    from tracer.backends.dlv.placement import place
    from tracer.targets.process import file_bytes

    exe = str(sample("go1.27/sample-operator"))
    plan = compile_plan(analyze(exe))
    entries = [p for p in plan.points if p.role == "entry"]
    exits = [p for p in plan.points if p.role == "exit"]
    assert entries and exits
    for point in entries:
        assert file_bytes(exe, point.addr, 1) == b"\x55"  # push rbp, after the stack check
        spot = place(exe, point.addr)
        assert (spot.addr, spot.sp_adjust) == (point.addr + 1, 8)
        assert file_bytes(exe, spot.addr, 3) == b"\x48\x89\xe5"  # mov rbp, rsp
    for point in exits:
        assert file_bytes(exe, point.addr, 1) == b"\xc3"
        assert place(exe, point.addr).addr == point.addr
