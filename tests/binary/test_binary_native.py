"""analyze() on native (C, Rust) executables, checked against binutils."""

from __future__ import annotations

import pytest
from binary_fixtures import (
    build_c,
    build_rust,
    gnu_nm_functions,
    readelf_gnu_build_id,
    readelf_is_dyn,
    readelf_sections,
)

from tracer.binary.analyze import read_function_code
from tracer.binary.elfimage import ElfImage

pytestmark = pytest.mark.usefixtures("need_binutils")


def test_c_pie_functions_match_nm(analyzed_cache):
    binary, _ = build_c()
    info = analyzed_cache(binary)
    assert info.language == "native"
    assert info.pie is True and readelf_is_dyn(binary)
    assert info.has_symtab and not info.has_dwarf
    assert info.go_version is None and info.go_types_base is None and info.go_goid_offset is None
    assert info.build_id == readelf_gnu_build_id(binary)
    want = {(s.name, s.addr, s.addr + s.size) for s in gnu_nm_functions(binary) if s.size}
    assert {(f.name, f.entry, f.end) for f in info.functions} == want
    assert info.functions == sorted(info.functions, key=lambda f: f.entry)


def test_c_stripped_has_no_symbols_but_same_identity(analyzed_cache):
    binary, stripped = build_c()
    info = analyzed_cache(stripped)
    assert ".symtab" not in readelf_sections(stripped)
    assert not info.has_symtab
    assert info.language == "native" and info.pie
    # Only .dynsym is left; an executable exports no functions of its own.
    want = {(s.name, s.addr) for s in gnu_nm_functions(stripped) if s.size}
    assert {(f.name, f.entry) for f in info.functions} == want
    assert info.build_id == readelf_gnu_build_id(binary)


def test_read_function_code_matches_objdump_bytes(analyzed_cache):
    from binary_fixtures import objdump_range

    binary, _ = build_c()
    info = analyzed_cache(binary)
    for fn in info.functions:
        code = read_function_code(info, fn)
        assert len(code) == fn.end - fn.entry
        listed = b"".join(i.raw for i in objdump_range(binary, fn.entry, fn.end))
        assert code == listed, fn.name
    with ElfImage(str(binary)) as img:
        main = info.function_named("main")
        assert img.read(main.entry, 4) == read_function_code(info, main)[:4]


def test_rust_is_detected(analyzed_cache):
    path = build_rust()
    if path is None:
        pytest.skip("rustc not installed")
    info = analyzed_cache(path)
    assert info.language == "rust"
    assert info.go_version is None
    assert any("reconcile" in f.name for f in info.functions)
