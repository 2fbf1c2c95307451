"""Breakpoint placement facts checked against objdump (binutils) and gdb."""

from __future__ import annotations

import re

import pytest
from binary_fixtures import (
    LEAF,
    RECONCILE,
    ObjInsn,
    build_c,
    build_go,
    gdb_break_address,
    objdump_range,
    objdump_rets,
)

from tracer.binary.disasm import go_post_prologue, native_entry, return_addresses

pytestmark = pytest.mark.usefixtures("need_binutils")

_JUMP = re.compile(r"^(?:jbe|jna)\s+([0-9a-f]+)\b")
_CALL_MORESTACK = re.compile(r"^call\s+[0-9a-f]+ <runtime\.morestack")


def _objdump_post_prologue(path, fn) -> int:
    """Ground truth from objdump's symbolised listing: the first early jbe whose
    target block calls runtime.morestack*; the instruction after it. Else entry."""
    insns = objdump_range(path, fn.entry, fn.end)
    for k, insn in enumerate(insns[:12]):
        m = _JUMP.match(insn.text)
        if not m:
            continue
        target = int(m.group(1), 16)
        block = [i for i in insns if i.addr >= target][:48]
        if any(_CALL_MORESTACK.match(i.text) for i in block):
            return insns[k + 1].addr
    return fn.entry


@pytest.mark.parametrize("variant", ["opt", "nopt"])
def test_post_prologue_matches_objdump_for_every_function(go_ver, variant, analyzed_cache):
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    go_text = [f for f in info.functions if not f.name.startswith(("_", "x_cgo"))]
    with_check = 0
    for fn in go_text:
        want = _objdump_post_prologue(path, fn)
        assert go_post_prologue(info, fn) == want, fn.name
        with_check += want != fn.entry
    # Most Go functions have a stack check; most assembly/nosplit ones do not.
    assert with_check > len(go_text) // 2


_FRAME_SETUP = re.compile(
    r"^(?:push\s+%rbp|mov\s+%rsp,%rbp|sub\s+\$0x[0-9a-f]+,%rsp|add\s+\$0x[0-9a-f]+,%rsp"
    r"|lea\s+-?0x[0-9a-f]+\(%rsp\),%rbp|mov\s+%rbp,-?0x[0-9a-f]+\(%rsp\))$"
)


@pytest.mark.parametrize("variant", ["opt", "nopt"])
@pytest.mark.parametrize("name", [RECONCILE, "main.main", "runtime.mallocgc", "fmt.Fprintln"])
def test_post_prologue_agrees_with_gdb_breakpoint(go_ver, variant, name, analyzed_cache):
    """gdb puts `break FUNC` after the prologue from the DWARF line table. With
    Go 1.19 that is exactly after the jbe; newer Go also skips the frame setup
    (push rbp; mov rbp, rsp; sub rsp), which is fine to stop before."""
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    fn = info.function_named(name)
    ours = go_post_prologue(info, fn)
    theirs = gdb_break_address(path, name)
    assert fn.entry < ours <= theirs
    between: list[ObjInsn] = objdump_range(path, ours, theirs)
    assert all(_FRAME_SETUP.match(i.text) for i in between), [i.text for i in between]
    if go_ver == "1.19":
        assert ours == theirs


def test_nosplit_leaf_breaks_at_entry(go_ver, analyzed_cache):
    info = analyzed_cache(build_go(go_ver, "opt"))
    fn = info.function_named(LEAF)
    assert go_post_prologue(info, fn) == fn.entry
    assert not any(_JUMP.match(i.text)
                   for i in objdump_range(build_go(go_ver, "opt"), fn.entry, fn.end))


@pytest.mark.parametrize("variant", ["opt", "nopt"])
def test_return_addresses_match_objdump_for_every_function(go_ver, variant, analyzed_cache):
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    total = 0
    for fn in info.functions:
        got = return_addresses(info, fn)
        assert got == objdump_rets(path, fn.entry, fn.end), fn.name
        total += len(got)
    assert total > len(info.functions) // 2
    assert return_addresses(info, info.function_named(RECONCILE))


def test_native_functions_rets_and_entry(analyzed_cache):
    binary, _stripped = build_c()
    info = analyzed_cache(binary)
    names = {f.name for f in info.functions}
    assert {"main", "classify", "reconcile", "fib"} <= names
    for fn in info.functions:
        assert native_entry(info, fn) == fn.entry
        assert return_addresses(info, fn) == objdump_rets(binary, fn.entry, fn.end), fn.name
    classify = info.function_named("classify")
    assert len(return_addresses(info, classify)) >= 1
