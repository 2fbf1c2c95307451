"""gotypes decoders, using the ELF file itself as the 'memory' of the process.

Ground truth:
  * Go 1.19 keeps one symbol per itab ("go.itab.<type>,<iface>"), which spells the
    concrete type exactly as the runtime type string does;
  * the Go linker's DWARF tags every type DIE with its runtime type
    (DW_AT_go_runtime_type, an offset from runtime.types) and kind (DW_AT_go_kind).
"""

from __future__ import annotations

import re
import struct

import pytest
from binary_fixtures import build_go, dwarf_go_types, go_nm, go_nm_lookup

from tracer.binary.elfimage import ElfImage
from tracer.binary.gotypes import (
    KIND_POINTER,
    read_name,
    type_kind,
    type_name,
)
from tracer.binary.govalues import GoMemory

pytestmark = pytest.mark.usefixtures("need_binutils")

# Where each type's message is (tracer.binary.govalues), from the types' Go source:
# errorString{s string} and wrapError{msg string; err error} return that field from Error();
# countError{n int; msg string} formats both (so no message is read from it); a panic's
# plain string is its own message.
CASES = {
    "*errors.errorString": 0,
    "*fmt.wrapError": 0,
    "*controllers.countError": None,
    "errors.errorString": 0,
    "string": 0,
    "int": None,
}


def message_offset(read, types_base: int, typ: int) -> int | None:
    return GoMemory(read, types_base, None).error_layout(typ).message_offset


def _short(dwarf_name: str) -> str:
    """DWARF spells full import paths, where type strings use the package name only;
    it also keeps compiler-internal decorations the runtime strings drop: "noalg."
    on runtime-internal types, "·N" on function-local types."""
    name = re.sub(r"(?:[\w.\-]+/)+", "", dwarf_name)
    return re.sub(r"·\d+", "", name.replace("noalg.", ""))


def _u64(read, addr):
    return struct.unpack("<Q", read(addr, 8))[0]


def test_go119_itab_symbols(analyzed_cache):
    """Go 1.19's go.itab.* symbols: itab+8 is the concrete *_type."""
    path = build_go("1.19", "opt")
    info = analyzed_cache(path)
    itabs = {}
    for s in go_nm("1.19", path):
        m = re.fullmatch(r"go[.:]itab\.(.*),error", s.name)
        if m:
            itabs[_short(m.group(1))] = s.addr
    assert {"*errors.errorString", "*fmt.wrapError", "*controllers.countError"} <= set(itabs)
    with ElfImage(str(path)) as img:
        for concrete, itab in itabs.items():
            typ = _u64(img.read, itab + 8)
            assert type_name(img.read, info.go_types_base, typ) == concrete
            assert (type_kind(img.read, typ) == KIND_POINTER) == concrete.startswith("*")
            if concrete in CASES:
                assert message_offset(img.read, info.go_types_base, typ) == CASES[concrete]


@pytest.mark.parametrize("variant", ["opt", "pie"])
def test_every_dwarf_type_decodes(go_ver, variant, analyzed_cache):
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    base = go_nm_lookup(go_ver, path, "runtime.types")
    span = go_nm_lookup(go_ver, path, "runtime.etypes") - base
    # 0 means "no runtime type in this binary"; a few builtins (uintptr) carry an
    # absolute address instead of an offset. Keep the plain offsets. DWARF spells
    # anonymous struct/interface fields package-qualified ("struct { runtime.len int }"),
    # unlike the runtime, so literal struct types are left out.
    types = [t for t in dwarf_go_types(path) if 0 < t[2] < span and "{" not in t[0]]
    assert len(types) > 300
    seen = {}
    with ElfImage(str(path)) as img:
        for name, kind, off in types:
            addr = base + off
            assert type_name(img.read, info.go_types_base, addr) == _short(name)
            if kind > 0:  # DWARF omits (or zeroes) the kind on some synthesized DIEs
                assert type_kind(img.read, addr) == kind, name
            seen[_short(name)] = addr
        for name, want in CASES.items():
            assert message_offset(img.read, info.go_types_base, seen[name]) == want, name


def test_itab_type_pointer_go127(analyzed_cache):
    """Go 1.27 has no per-itab symbols: walk the itab area that moduledata records
    (types+itaboffset, itabsize; runtime/symtab.go) and check itab+8 there."""
    ver = "1.27"
    path = build_go(ver, "opt")
    info = analyzed_cache(path)
    base = go_nm_lookup(ver, path, "runtime.types")
    md = go_nm_lookup(ver, path, "runtime.firstmoduledata")
    want = {_short(n): base + off for n, _k, off in dwarf_go_types(path) if off}
    with ElfImage(str(path)) as img:
        read = img.read
        words = struct.unpack("<48Q", read(md, 48 * 8))
        assert words[37] == base  # types; then typedesclen, etypes, itaboffset, itabsize
        start, size = base + words[40], words[41]
        found = {}
        addr = start
        while addr < start + size:
            inter, typ = _u64(read, addr), _u64(read, addr + 8)
            inter_name = type_name(read, info.go_types_base, inter)
            methods = _u64(read, inter + 56 + 8)  # InterfaceType.Methods len
            if inter_name == "error":
                found[type_name(read, info.go_types_base, typ)] = typ
            addr += 24 + 8 * max(1, methods)
        for name in ("*errors.errorString", "*fmt.wrapError", "*controllers.countError"):
            assert found[name] == want[name]
            assert message_offset(read, info.go_types_base, found[name]) == CASES[name]
        counted = GoMemory(read, info.go_types_base, None).error_layout(
            found["*controllers.countError"])
        assert set(counted.fields) == {"n", "msg"}  # read as fields, by name


def test_read_name_rejects_garbage():
    mem = b"\x00" + b"\xff" * 12

    def read(addr, n):
        return mem[addr:addr + n]

    with pytest.raises(ValueError):
        read_name(read, 0)
