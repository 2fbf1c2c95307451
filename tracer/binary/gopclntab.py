"""Go's pclntab (runtime.pcheader + function table), Go 1.18+ layouts.

Layout facts (runtime/symtab.go ``pcHeader``, cmd/link/internal/ld/pcln.go):

    magic u32 | pad1 u8 | pad2 u8 | minLC u8 | ptrSize u8 |
    nfunc uintptr | nfiles uintptr | textStart uintptr |
    funcnameOffset | cuOffset | filetabOffset | pctabOffset | pclnOffset   (uintptrs)

All offsets are relative to the header. ``pclnOffset`` points at the function
table: ``nfunc`` pairs of (entryOff u32, funcOff u32) plus one trailing entryOff
marking the end of the last function. ``entryOff`` is relative to the module's
text start; ``funcOff`` points (relative to the function table) at a ``_func``
whose second field is ``nameOff`` (i32 into funcnametab, NUL-terminated names).

Magic 0xFFFFFFF0 is Go 1.18/1.19, 0xFFFFFFF1 is Go 1.20+. Newer linkers write 0
in textStart (it needed a relocation), so the text base must come from
moduledata.text instead.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from .elfimage import ElfImage, Section
from .model import Function

MAGIC_GO118 = 0xFFFFFFF0
MAGIC_GO120 = 0xFFFFFFF1
_MAGICS = (MAGIC_GO118, MAGIC_GO120)
_HEADER = struct.Struct("<IBBBB8Q")
HEADER_SIZE = _HEADER.size  # 72

# Sections the pclntab lives in when the linker keeps it separate.
_PCLNTAB_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")
# Where an external linker (or a section-header stripper) may have merged it.
_SCAN_FIRST = (".rodata", ".data.rel.ro", ".noptrdata")


@dataclass(frozen=True)
class PcHeader:
    addr: int  # vaddr of the header
    magic: int
    min_lc: int
    nfunc: int
    nfiles: int
    text_start: int  # 0 when the linker did not store it
    funcname_off: int
    cu_off: int
    filetab_off: int
    pctab_off: int
    pcln_off: int

    @property
    def funcnametab_addr(self) -> int:
        return self.addr + self.funcname_off

    @property
    def go120(self) -> bool:
        return self.magic == MAGIC_GO120


def parse_header(buf: memoryview | bytes, pos: int, addr: int) -> PcHeader | None:
    """Decode and sanity-check a pcHeader at ``buf[pos:]``; None if implausible."""
    if pos < 0 or pos + HEADER_SIZE > len(buf):
        return None
    (magic, pad1, pad2, min_lc, ptr_size, nfunc, nfiles, text_start,
     fn_off, cu_off, file_off, pc_off, pcln_off) = _HEADER.unpack_from(buf, pos)
    if magic not in _MAGICS or pad1 or pad2 or ptr_size != 8 or min_lc not in (1, 2, 4):
        return None
    avail = len(buf) - pos
    if not (0 < nfunc < 1 << 24 and nfiles < 1 << 24):
        return None
    if not (HEADER_SIZE <= fn_off <= cu_off <= file_off <= pc_off <= pcln_off < avail):
        return None
    if pcln_off + (2 * nfunc + 1) * 4 > avail:
        return None
    hdr = PcHeader(addr, magic, min_lc, nfunc, nfiles, text_start,
                   fn_off, cu_off, file_off, pc_off, pcln_off)
    # The function table is sorted; checking a few entries is cheap and rejects noise.
    first, second, last = (_entry_off(buf, pos, hdr, i) for i in (0, min(1, nfunc), nfunc))
    if not first <= second <= last:
        return None
    return hdr


def _entry_off(buf: memoryview | bytes, pos: int, hdr: PcHeader, i: int) -> int:
    return struct.unpack_from("<I", buf, pos + hdr.pcln_off + 8 * i)[0]


@dataclass
class PclnTab:
    header: PcHeader
    section: Section
    data: memoryview  # section bytes; header at ``pos``
    pos: int
    found_by_scan: bool

    def functions(self, text_start: int) -> list[Function]:
        """All functions, sorted by entry; ``end`` is the next function's entry.

        Using the next entry (as the runtime's own findfunc does) includes the
        int3 alignment padding after a function; the RET sweep tolerates that.
        """
        h, buf, base = self.header, self.data, self.pos
        n = h.nfunc
        ft = base + h.pcln_off
        tab = array("I")
        tab.frombytes(buf[ft:ft + (2 * n + 1) * 4])
        entries = tab[0::2]  # n + 1 values: the last is the end of the final function
        func_offs = tab[1::2]
        names = bytes(buf[base + h.funcname_off:base + h.cu_off])
        # Hot loop (hundreds of thousands of functions in big binaries): locals only.
        unpack_i32 = struct.Struct("<i").unpack_from
        find = names.find
        out: list[Function] = []
        append = out.append
        for start, end, func_off in zip(entries[:-1], entries[1:], func_offs, strict=True):
            name_off = unpack_i32(buf, ft + func_off + 4)[0]
            name = names[name_off:find(b"\0", name_off)].decode("utf-8", "replace")
            append(Function(name, text_start + start, text_start + end))
        # The linker emits them sorted; sort anyway so callers can bisect blindly.
        if any(a > b for a, b in zip(entries[:-1], entries[1:], strict=True)):
            out.sort(key=lambda f: f.entry)
        return out


def find_pclntab(img: ElfImage) -> PclnTab | None:
    """Locate the pcHeader by section name, else by scanning data sections."""
    for name in _PCLNTAB_SECTIONS:
        sec = img.sections.get(name)
        if sec is not None and sec.has_file_data:
            data = img.section_data(sec)
            hdr = parse_header(data, 0, sec.addr)
            if hdr is not None:
                return PclnTab(hdr, sec, data, 0, False)
    ordered = [img.sections[n] for n in _SCAN_FIRST if n in img.sections]
    ordered += [s for s in img.section_list
                if s.alloc and not s.exec and s.has_file_data and s not in ordered]
    for sec in ordered:
        found = _scan_section(img, sec)
        if found is not None:
            return found
    return None


def _scan_section(img: ElfImage, sec: Section) -> PclnTab | None:
    # mmap.find scans the file at C speed without copying the section.
    lo, hi = sec.offset, min(sec.offset + sec.size, len(img.data))
    data = img.section_data(sec)
    for magic in _MAGICS:
        needle = struct.pack("<IBB", magic, 0, 0)
        i = img.data.find(needle, lo, hi)
        while i != -1:
            hdr = parse_header(data, i - lo, sec.addr + (i - lo))
            if hdr is not None:
                return PclnTab(hdr, sec, data, i - lo, True)
            i = img.data.find(needle, i + 1, hi)
    return None
