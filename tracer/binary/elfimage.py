"""Memory-mapped view of one ELF file.

pyelftools parses the headers (sections, segments); bulk data is sliced straight
out of a single mmap so a 100 MB binary is never copied or re-read, and symbol
tables are decoded with ``struct.iter_unpack`` because pyelftools' per-symbol
construct parsing is orders of magnitude slower on large tables.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .model import BinaryError, Segment

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_COMPRESSED = 0x800

STT_FUNC = 2
STT_GNU_IFUNC = 10
SHN_UNDEF = 0

_SYM64 = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: str
    addr: int
    offset: int
    size: int
    flags: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def exec(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def has_file_data(self) -> bool:
        return self.type != "SHT_NOBITS"

    def contains(self, addr: int) -> bool:
        return self.addr <= addr < self.addr + self.size


class ElfImage:
    """An opened ELF/x86-64 file. Use as a context manager."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fh = open(path, "rb")  # closed in close()
        except FileNotFoundError:
            raise BinaryError(f"{path}: no such file; check the path to the executable") from None
        except IsADirectoryError:
            raise BinaryError(f"{path} is a directory; pass the executable file") from None
        except PermissionError:
            raise BinaryError(f"{path}: permission denied; make the file readable") from None
        try:
            self._init()
        except BaseException:
            self.close()
            raise

    def _init(self) -> None:
        path = self.path
        size = os.fstat(self._fh.fileno()).st_size
        if size < 64:
            raise BinaryError(f"{path} is not an ELF executable (only {size} bytes)")
        self.data = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.view = memoryview(self.data)
        if self.data[:4] != b"\x7fELF":
            raise BinaryError(f"{path} is not an ELF executable; pass a Linux binary, not a script")
        try:
            self.elf = ELFFile(self._fh)
        except ELFError as e:
            raise BinaryError(f"{path} is a malformed ELF file ({e})") from None
        machine = self.elf["e_machine"]
        if self.elf.elfclass != 64 or machine != "EM_X86_64":
            arch = machine.removeprefix("EM_") if isinstance(machine, str) else str(machine)
            raise BinaryError(
                f"{path} is a {self.elf.elfclass}-bit {arch} binary; "
                "tracer supports only x86-64 executables"
            )
        if not self.elf.little_endian:
            raise BinaryError(f"{path} is big-endian; tracer supports only x86-64 executables")
        self.pie = self.elf["e_type"] == "ET_DYN"
        self.entry_point = self.elf["e_entry"]
        self.sections: dict[str, Section] = {}
        self.section_list: list[Section] = []
        self._links: list[int] = []
        for i, s in enumerate(self.elf.iter_sections()):
            h = s.header
            sec = Section(i, s.name, h["sh_type"], h["sh_addr"], h["sh_offset"], h["sh_size"],
                          h["sh_flags"])
            self._links.append(h["sh_link"])
            self.section_list.append(sec)
            self.sections.setdefault(s.name, sec)
        self.segments: tuple[Segment, ...] = tuple(
            Segment(g["p_vaddr"], g["p_offset"], g["p_filesz"], g["p_memsz"], g["p_flags"])
            for g in self.elf.iter_segments()
            if g["p_type"] == "PT_LOAD"
        )

    # -- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        # Slices handed out by section_data() may still be alive in the caller's
        # frame; then the mmap is unmapped by the GC once they go, not here.
        view, self.view = getattr(self, "view", None), None  # type: ignore[assignment]
        data, self.data = getattr(self, "data", None), None  # type: ignore[assignment]
        try:
            if view is not None:
                view.release()
            if data is not None:
                data.close()
        except BufferError:
            pass
        self._fh.close()

    def __enter__(self) -> ElfImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw data -----------------------------------------------------------
    def section_data(self, sec: Section) -> memoryview:
        """Uncompressed file bytes of a section (empty for NOBITS)."""
        if not sec.has_file_data or sec.size == 0:
            return memoryview(b"")
        if sec.flags & SHF_COMPRESSED:
            return memoryview(self.elf.get_section_by_name(sec.name).data())
        end = min(sec.offset + sec.size, len(self.data))
        return self.view[sec.offset:end]

    def section_containing(self, addr: int) -> Section | None:
        for sec in self.section_list:
            if sec.alloc and sec.contains(addr):
                return sec
        return None

    def vaddr_to_offset(self, vaddr: int, size: int = 1) -> int | None:
        for seg in self.segments:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return seg.offset + (vaddr - seg.vaddr)
        return None

    def read(self, vaddr: int, size: int) -> bytes:
        """Read file-backed bytes at a static vaddr; BinaryError if unmapped."""
        off = self.vaddr_to_offset(vaddr, size)
        if off is None:
            raise BinaryError(
                f"{self.path}: address {vaddr:#x} (+{size}) is not in the file; "
                "the binary may be truncated or corrupt"
            )
        return bytes(self.data[off:off + size])

    def read_u64(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 8), "little")

    # -- symbols ------------------------------------------------------------
    def has_symbols(self, name: str) -> bool:
        sec = self.sections.get(name)
        return sec is not None and sec.size > _SYM64.size  # entry 0 is always null

    def _linked_strtab(self, sec: Section) -> bytes:
        link = self._links[sec.index]
        if not 0 < link < len(self.section_list):
            return b""
        return bytes(self.section_data(self.section_list[link]))

    def iter_func_symbols(self, name: str) -> Iterator[tuple[str, int, int]]:
        """(name, value, size) for defined FUNC/IFUNC symbols with a non-zero size."""
        sec = self.sections.get(name)
        if sec is None or not sec.has_file_data:
            return
        strs = self._linked_strtab(sec)
        raw = self.section_data(sec)
        usable = len(raw) - len(raw) % _SYM64.size
        for st_name, st_info, _other, shndx, value, size in _SYM64.iter_unpack(raw[:usable]):
            kind = st_info & 0xF
            if (kind != STT_FUNC and kind != STT_GNU_IFUNC) or shndx == SHN_UNDEF or size == 0:
                continue
            end = strs.find(b"\0", st_name)
            yield strs[st_name:end].decode("utf-8", "replace"), value, size

    def symbol_value(self, name: str, symtab: str = ".symtab") -> int | None:
        """Value of the first symbol called ``name`` (any type). Linear, for tests/fallbacks."""
        sec = self.sections.get(symtab)
        if sec is None or not sec.has_file_data:
            return None
        strs = self._linked_strtab(sec)
        want = name.encode() + b"\0"
        # Find candidate string offsets first (C speed), then match symbols to them.
        # Linkers share string suffixes, so a hit in the middle of a longer string is
        # still a valid st_name for this name.
        offsets = set()
        i = strs.find(want)
        while i != -1:
            offsets.add(i)
            i = strs.find(want, i + 1)
        if not offsets:
            return None
        raw = self.section_data(sec)
        usable = len(raw) - len(raw) % _SYM64.size
        for st_name, _info, _other, shndx, value, _size in _SYM64.iter_unpack(raw[:usable]):
            if st_name in offsets and shndx != SHN_UNDEF:
                return value
        return None
