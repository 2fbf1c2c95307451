"""Rust trait-object vtables: [drop_in_place, size, align, method 0, method 1, ...].

When a function was inlined everywhere but a trait object still needs it, its vtable slot
names it: e.g. the poll of a future boxed as `dyn Future` sits three slots after the
future's `drop_in_place`. In a PIE the slots are relocations (R_X86_64_RELATIVE, the
address in the addend); in a fixed-address executable they are the file's own bytes.
"""

from __future__ import annotations

from functools import lru_cache

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from .model import BinaryInfo

R_X86_64_RELATIVE = 8
VTABLE_SECTIONS = (".data.rel.ro", ".data.rel.ro.local", ".rodata")


@lru_cache(maxsize=8)
def code_slots(path: str) -> dict[int, int]:
    """Every pointer-sized slot holding a code address: {slot address: value}."""
    slots: dict[int, int] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for section in elf.iter_sections():
            if isinstance(section, RelocationSection) and section.is_RELA():
                for rel in section.iter_relocations():
                    if rel["r_info_type"] == R_X86_64_RELATIVE:
                        slots[rel["r_offset"]] = rel["r_addend"]
        if slots:
            return slots
        for name in VTABLE_SECTIONS:
            section = elf.get_section_by_name(name)
            if section is None or section["sh_type"] == "SHT_NOBITS":
                continue
            data, base = section.data(), section["sh_addr"]
            for at in range(0, len(data) - 7, 8):
                slots[base + at] = int.from_bytes(data[at:at + 8], "little")
    return slots


def vtable_methods(info: BinaryInfo, drop: int, index: int) -> list[int]:
    """The functions in slot `index` of every vtable whose slot 0 is `drop` (identical drops
    are folded, so one drop can head the vtables of several types and traits)."""
    slots = code_slots(info.path)
    found = []
    for at, value in slots.items():
        if value == drop:
            method = slots.get(at + 8 * index)
            if method is not None and info.function_at(method) is not None:
                found.append(method)
    return list(dict.fromkeys(found))
