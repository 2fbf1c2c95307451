"""analyze() on real Go builds, checked against go tool nm / readelf / gdb."""

from __future__ import annotations

import os
import re
import struct

import pytest
from binary_fixtures import (
    GO_TOOLCHAINS,
    GO_VARIANTS,
    RECONCILE,
    build_go,
    gdb_goid_offset,
    gdb_member_offset,
    go_nm,
    go_nm_lookup,
    go_tool_buildid,
    go_version_string,
    objcopy_stripped,
    readelf_gnu_build_id,
    readelf_is_dyn,
    readelf_sections,
)

from tracer.binary import dwarfscan
from tracer.binary.analyze import analyze
from tracer.binary.elfimage import ElfImage
from tracer.binary.gobuildinfo import decode_blob, major_minor
from tracer.binary.gopclntab import find_pclntab
from tracer.binary.goruntime import GOID_OFFSET_BY_VERSION

pytestmark = pytest.mark.usefixtures("need_binutils")

# Symbols the linker puts in .text that are markers, not functions in the pclntab.
_MARKERS = {"runtime.text", "runtime.etext"}


def _norm(name: str) -> str:
    # The pclntab writes array lengths in type..eq names as "[...]" (Go 1.19).
    return re.sub(r"\[\d+\]", "[...]", name)


def _nm_functions(ver, path):
    """{(name, addr): size} for text symbols with a size (crt stubs such as
    frame_dummy have none). nm names assembly funcs "x.abi0", the pclntab "x"."""
    out = {}
    for s in go_nm(ver, path):
        if s.kind in "Tt" and s.name not in _MARKERS and s.size > 0:
            out[(_norm(s.name.removesuffix(".abi0")), s.addr)] = s.size
    return out


def _ours(info):
    return {(_norm(f.name), f.entry) for f in info.functions}


@pytest.mark.parametrize("variant", sorted(GO_VARIANTS))
def test_basic_fields(go_ver, variant, analyzed_cache):
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    sections = readelf_sections(path)
    assert info.language == "go"
    assert info.go_version == go_version_string(go_ver)
    assert info.pie == readelf_is_dyn(path)
    assert info.has_symtab == (".symtab" in sections)
    assert info.has_dwarf == (".debug_info" in sections)
    gnu = readelf_gnu_build_id(path)
    assert info.build_id == (gnu if gnu else go_tool_buildid(go_ver, path))
    assert info.functions == sorted(info.functions, key=lambda f: f.entry)


@pytest.mark.parametrize("variant", ["opt", "nopt", "pie", "ext"])
def test_functions_match_nm(go_ver, variant, analyzed_cache):
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    assert _ours(info) == set(_nm_functions(go_ver, path))


def test_stripped_functions_match_unstripped_twin(go_ver, analyzed_cache):
    """-ldflags=-s -w only drops symbols/DWARF: text addresses equal the twin's."""
    stripped = analyzed_cache(build_go(go_ver, "strip"))
    assert not stripped.has_symtab and not stripped.has_dwarf
    twin = _nm_functions(go_ver, build_go(go_ver, "opt"))
    assert _ours(stripped) == set(twin)
    assert stripped.function_named(RECONCILE) is not None


@pytest.mark.parametrize("variant", ["opt", "ext"])
def test_function_ends_cover_nm_size_and_padding_is_int3(go_ver, variant, analyzed_cache):
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    sizes = _nm_functions(go_ver, path)
    lo = go_nm_lookup(go_ver, path, "runtime.text")
    hi = go_nm_lookup(go_ver, path, "runtime.etext")
    go_fns = [f for f in info.functions if lo <= f.entry < hi]
    assert len(go_fns) > 1000
    with ElfImage(str(path)) as img:
        for i, fn in enumerate(go_fns):
            size = sizes[(_norm(fn.name), fn.entry)]
            assert fn.entry + size <= fn.end, fn
            if i + 1 < len(go_fns):
                assert fn.end == go_fns[i + 1].entry
            pad = img.read(fn.entry + size, fn.end - fn.entry - size)
            assert set(pad) <= {0xCC}, (fn.name, pad.hex())
    # Functions outside Go's text (cgo/crt C code) come from .symtab with exact sizes.
    for fn in info.functions:
        if not lo <= fn.entry < hi:
            assert fn.end - fn.entry == sizes[(fn.name, fn.entry)], fn


@pytest.mark.parametrize("variant", ["opt", "nopt", "pie", "ext"])
def test_types_base_matches_runtime_types(go_ver, variant, analyzed_cache):
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    assert info.go_types_base == go_nm_lookup(go_ver, path, "runtime.types")
    assert info.go_text_start == go_nm_lookup(go_ver, path, "runtime.text")
    assert info.go_moduledata_addr == go_nm_lookup(go_ver, path, "runtime.firstmoduledata")


def test_objcopy_stripped_keeps_everything(go_ver, analyzed_cache):
    """A symbol-less copy with identical layout: nm of the original is ground truth."""
    src = build_go(go_ver, "opt")
    info = analyzed_cache(objcopy_stripped(src))
    assert not info.has_symtab and not info.has_dwarf
    assert info.go_types_base == go_nm_lookup(go_ver, src, "runtime.types")
    assert _ours(info) == set(_nm_functions(go_ver, src))
    assert info.go_goid_source == "table"
    assert info.go_goid_offset == gdb_goid_offset(src)


@pytest.mark.parametrize("variant", ["opt", "nopt", "pie", "ext"])
def test_goid_offset_from_dwarf_matches_gdb(go_ver, variant, analyzed_cache):
    path = build_go(go_ver, variant)
    info = analyzed_cache(path)
    assert info.go_goid_source == "dwarf"
    assert info.go_goid_offset == gdb_goid_offset(path)


def test_goid_table_matches_dwarf(go_ver):
    path = build_go(go_ver, "opt")
    assert GOID_OFFSET_BY_VERSION[major_minor(go_version_string(go_ver))] == gdb_goid_offset(path)


def test_stripped_goid_uses_table(go_ver, analyzed_cache):
    info = analyzed_cache(build_go(go_ver, "strip"))
    assert info.go_goid_source == "table"
    assert info.go_goid_offset == gdb_goid_offset(build_go(go_ver, "opt"))


# Go binaries that happen to be installed on this machine (other Go versions than
# our toolchains); used only when present and only where they carry DWARF.
_SYSTEM_GO = ["/usr/local/bin/docker"]


@pytest.mark.parametrize("path", _SYSTEM_GO)
def test_goid_table_matches_dwarf_on_system_binaries(path, need_binutils):
    if not os.path.exists(path):
        pytest.skip(f"{path} not present")
    info = analyze(path)
    if info.language != "go" or not info.has_dwarf:
        pytest.skip(f"{path} is not a Go binary with DWARF")
    truth = gdb_goid_offset(path)
    assert info.go_goid_offset == truth
    assert GOID_OFFSET_BY_VERSION[major_minor(info.go_version)] == truth


def _rename_section(src, dst, old: bytes, new: bytes):
    """Copy ``src`` renaming one section in .shstrtab (same length, so layout is kept)."""
    assert len(old) == len(new)
    data = bytearray(src.read_bytes())
    i = data.find(old + b"\0")
    assert i != -1
    data[i:i + len(old)] = new
    dst.write_bytes(bytes(data))
    dst.chmod(0o755)
    return dst


def test_pclntab_found_by_scanning_when_section_is_renamed(go_ver, tmp_path):
    src = build_go(go_ver, "strip")
    hidden = _rename_section(src, tmp_path / "hidden", b".gopclntab", b".xopclntab")
    assert ".gopclntab" not in readelf_sections(hidden)
    with ElfImage(str(hidden)) as img:
        tab = find_pclntab(img)
        assert tab is not None and tab.found_by_scan
    got, want = analyze(str(hidden)), analyze(str(src))
    assert got.functions == want.functions
    assert got.go_types_base == want.go_types_base


def test_moduledata_found_through_relocations(go_ver, tmp_path):
    """If the moduledata words are left for the dynamic loader to fill in (zero in
    the file), the RELATIVE relocations still give them away."""
    src = build_go(go_ver, "pie")
    md = go_nm_lookup(go_ver, src, "runtime.firstmoduledata")
    want = analyze(str(src))
    with ElfImage(str(src)) as img:
        off = img.vaddr_to_offset(md, 16)
        relocs = _relative_reloc_offsets(img)
    if md not in relocs:
        pytest.skip("this linker did not emit a RELATIVE relocation for moduledata")
    data = bytearray(src.read_bytes())
    data[off:off + 16] = bytes(16)  # pcHeader and funcnametab pointers
    patched = tmp_path / "patched"
    patched.write_bytes(bytes(data))
    got = analyze(str(patched))
    assert got.go_moduledata_addr == md
    assert got.go_types_base == want.go_types_base == go_nm_lookup(go_ver, src, "runtime.types")
    assert got.functions == want.functions


def _relative_reloc_offsets(img):
    out = set()
    for sec in img.section_list:
        if sec.type == "SHT_RELA":
            raw = img.section_data(sec)
            for r_offset, r_info, _add in struct.iter_unpack("<QQq", raw[:len(raw) // 24 * 24]):
                if r_info & 0xFFFFFFFF == 8:
                    out.add(r_offset)
    return out


def test_buildinfo_pointer_form_decodes(go_ver):
    """Pre-1.18 blobs point at Go string headers; rebuild one from the real version."""
    version = go_version_string(go_ver).encode()
    memory = {0x1000: struct.pack("<QQ", 0x2000, len(version)), 0x2000: version,
              0x1010: struct.pack("<QQ", 0, 0)}

    def read(addr, n):
        return memory[addr][:n]

    blob = b"\xff Go buildinf:" + bytes([8, 0]) + struct.pack("<QQ", 0x1000, 0x1010)
    assert decode_blob(blob, read) == (version.decode(), "")


def test_go_toolchain_list_is_real():
    # Guard against the parametrisation silently skipping everything.
    assert any(os.access(p, os.X_OK) for p in GO_TOOLCHAINS.values())


@pytest.mark.parametrize("member", ["goid", "m", "sched", "atomicstatus"])
def test_dwarfscan_member_offsets_match_gdb(go_ver, member):
    """The targeted DIE decoder (no pyelftools DIE walk) against gdb's view."""
    path = build_go(go_ver, "nopt")
    with ElfImage(str(path)) as img:
        info = bytes(img.section_data(img.sections[".debug_info"]))
        abbrev = bytes(img.section_data(img.sections[".debug_abbrev"]))
    got = dwarfscan.struct_member_offset(info, abbrev, "runtime.g", member)
    assert got == gdb_member_offset(path, "runtime.g", member)
    assert dwarfscan.struct_member_offset(info, abbrev, "runtime.g", "no_such_field") is None
    assert dwarfscan.struct_member_offset(info, abbrev, "runtime.nosuchtype", "x") is None
