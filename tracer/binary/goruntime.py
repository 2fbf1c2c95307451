"""Go runtime metadata found statically: moduledata, types base, goid offset."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import dwarfscan
from .elfimage import SHF_WRITE, ElfImage
from .gobuildinfo import major_minor
from .gopclntab import PcHeader

# Word indices into runtime.moduledata (runtime/symtab.go). The head is stable
# since Go 1.18: pcHeader, six slices (funcnametab .. ftab), findfunctab, minpc,
# maxpc, text, etext, ...
MD_WORDS = 48
MD_FUNCNAMETAB = 1
MD_TEXT = 22
# "end, gcdata, gcbss, types": Go 1.20 inserted covctrs/ecovctrs before "end".
MD_TYPES_GO118 = 35
MD_TYPES_GO120 = 37

R_X86_64_RELATIVE = 8
_RELA = struct.Struct("<QQq")


@dataclass(frozen=True)
class ModuleData:
    addr: int
    text: int
    etext: int
    types: int | None
    etypes: int | None


def find_moduledata(img: ElfImage, hdr: PcHeader) -> ModuleData | None:
    """Find runtime.firstmoduledata: the word pair (&pcHeader, &funcnametab).

    Go 1.26+ gives it its own ``.go.module`` section; before that it lives in
    ``.noptrdata``. If the words are not in the file (an external linker that
    leaves RELATIVE relocations unapplied), look for them in ``.rela.dyn``.
    """
    needle = struct.pack("<QQ", hdr.addr, hdr.funcnametab_addr)
    order = [".go.module", ".noptrdata", ".data"]
    secs = [img.sections[n] for n in order if n in img.sections]
    secs += [s for s in img.section_list
             if s.alloc and s.flags & SHF_WRITE and s.has_file_data and s not in secs]
    for sec in secs:
        lo, hi = sec.offset, min(sec.offset + sec.size, len(img.data))
        i = img.data.find(needle, lo, hi)
        while i != -1:
            addr = sec.addr + (i - lo)
            if addr % 8 == 0 and i + MD_WORDS * 8 <= hi:
                words = list(struct.unpack_from(f"<{MD_WORDS}Q", img.data, i))
                md = _validate(img, addr, words, hdr)
                if md is not None:
                    return md
            i = img.data.find(needle, i + 1, hi)
    return _find_via_relocations(img, hdr)


def _find_via_relocations(img: ElfImage, hdr: PcHeader) -> ModuleData | None:
    relas = [s for s in img.section_list if s.type == "SHT_RELA" and s.has_file_data]
    if not relas:
        return None
    patches: dict[int, int] = {}
    candidates: list[int] = []
    for sec in relas:
        raw = img.section_data(sec)
        usable = len(raw) - len(raw) % _RELA.size
        for r_offset, r_info, addend in _RELA.iter_unpack(raw[:usable]):
            if r_info & 0xFFFFFFFF == R_X86_64_RELATIVE:
                patches[r_offset] = addend
                if addend == hdr.addr:
                    candidates.append(r_offset)
    for addr in candidates:
        off = img.vaddr_to_offset(addr, MD_WORDS * 8)
        if off is None:
            continue
        words = list(struct.unpack_from(f"<{MD_WORDS}Q", img.data, off))
        words = [patches.get(addr + 8 * k, w) if w == 0 else w for k, w in enumerate(words)]
        md = _validate(img, addr, words, hdr)
        if md is not None:
            return md
    return None


def _validate(img: ElfImage, addr: int, w: list[int], hdr: PcHeader) -> ModuleData | None:
    if w[0] != hdr.addr or w[MD_FUNCNAMETAB] != hdr.funcnametab_addr:
        return None
    text, etext = w[MD_TEXT], w[MD_TEXT + 1]
    tsec = img.section_containing(text)
    if tsec is None or not tsec.exec or etext < text:
        return None
    types = etypes = None
    idx = MD_TYPES_GO120 if hdr.go120 else MD_TYPES_GO118
    cand = w[idx]
    ysec = img.section_containing(cand)
    if ysec is not None and not ysec.exec:
        # etypes is the next word, or the one after (Go 1.27 added typedesclen between).
        for e in (w[idx + 1], w[idx + 2]):
            if cand < e < cand + (1 << 32):
                types, etypes = cand, e
                break
    return ModuleData(addr, text, etext, types, etypes)


def types_base_from_sections(img: ElfImage) -> int | None:
    """Heuristic when moduledata is unavailable: start of the type-data section."""
    for name in (".go.type", ".data.rel.ro.go.type", ".data.rel.ro", ".rodata"):
        sec = img.sections.get(name)
        if sec is not None:
            return sec.addr
    return None


# Offset of runtime.g.goid on amd64, by Go major.minor. Reasons for the steps:
#  - 1.18-1.22: 152 (DWARF-verified here on go1.19.8).
#  - 1.23 added g.syscallbp before goid (golang/go commit 2b82a4f): 160
#    (DWARF-verified here on a go1.24.3 binary).
#  - 1.25 removed gobuf.ret (g.sched shrinks by 8): back to 152
#    (DWARF-verified here on go1.27.3).
# Unknown (future) versions return None rather than a guess.
GOID_OFFSET_BY_VERSION: dict[tuple[int, int], int] = {
    (1, 18): 152, (1, 19): 152, (1, 20): 152, (1, 21): 152, (1, 22): 152,
    (1, 23): 160, (1, 24): 160,
    (1, 25): 152, (1, 26): 152, (1, 27): 152,
}


def goid_offset_for_version(go_version: str | None) -> int | None:
    mm = major_minor(go_version)
    return GOID_OFFSET_BY_VERSION.get(mm) if mm else None


def goid_offset_from_dwarf(img: ElfImage) -> int | None:
    """Offset of ``goid`` in the ``runtime.g`` struct DIE, without walking all DIEs.

    Go writes type names inline (DW_FORM_string), so the DIE is found by searching
    .debug_info for the bytes ``runtime.g\\0`` and decoding only that DIE and its
    direct children (dwarfscan). pyelftools is the fallback for anything unusual.
    """
    info_sec, abbrev_sec = img.sections.get(".debug_info"), img.sections.get(".debug_abbrev")
    if info_sec is None or abbrev_sec is None:
        return _goid_offset_pyelftools(img) if ".zdebug_info" in img.sections else None
    try:
        info = bytes(img.section_data(info_sec))
        abbrev = bytes(img.section_data(abbrev_sec))
        found = dwarfscan.struct_member_offset(info, abbrev, "runtime.g", "goid")
    except Exception:  # unexpected encoding: let pyelftools have a go
        found = None
    return found if found is not None else _goid_offset_pyelftools(img)


def _goid_offset_pyelftools(img: ElfImage) -> int | None:
    """Same lookup through pyelftools (decompresses every debug section: slower)."""
    try:
        dwarf = img.elf.get_dwarf_info(relocate_dwarf_sections=False)
        info = dwarf.debug_info_sec.stream.getvalue()
    except Exception:  # malformed/unsupported DWARF: fall back to the table
        return None
    needle = b"runtime.g\0"
    i = info.find(needle)
    while i != -1:
        for back in (1, 2, 3):
            try:
                die = dwarf.get_DIE_from_refaddr(i - back)
                name = die.attributes.get("DW_AT_name")
                if die.tag != "DW_TAG_structure_type" or name is None \
                        or name.value != b"runtime.g":
                    continue
                for child in die.iter_children():
                    cname = child.attributes.get("DW_AT_name")
                    if cname is not None and cname.value == b"goid":
                        loc = child.attributes["DW_AT_data_member_location"].value
                        return _member_offset(loc)
            except Exception:  # not a DIE boundary: try the next candidate
                continue
        i = info.find(needle, i + 1)
    return None


def _member_offset(loc: object) -> int | None:
    if isinstance(loc, int):
        return loc
    # DWARF 2 style: an expression, DW_OP_plus_uconst (0x23) <uleb>.
    if isinstance(loc, list) and loc and loc[0] == 0x23:
        value = shift = 0
        for b in loc[1:]:
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value
    return None
