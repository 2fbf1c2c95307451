"""Plain data produced by the static binary analysis (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field


class BinaryError(Exception):
    """One-line, user-facing message: what is wrong and what to do about it."""


@dataclass(frozen=True)
class Function:
    """A function as laid out in the file: static vaddrs, ``end`` exclusive.

    For PIE executables these are the unrelocated addresses from the file; the
    live tracer adds the load bias itself.
    """

    name: str
    entry: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.entry


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD mapping, used to turn vaddrs into file offsets."""

    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int  # PF_X=1, PF_W=2, PF_R=4


@dataclass
class BinaryInfo:
    path: str
    language: str  # "go" | "rust" | "native"
    go_version: str | None  # e.g. "go1.19.8", from the Go build info (works stripped)
    pie: bool  # ET_DYN
    has_symtab: bool
    has_dwarf: bool
    # GNU build-id (hex) when present, else the Go build ID string, else None.
    build_id: str | None
    # Sorted by entry. Go: from the pclntab (works stripped); else symtab/dynsym.
    functions: list[Function]
    # Go: moduledata.types, the base that nameOff/typeOff in runtime types are relative to.
    go_types_base: int | None
    # Offset of goid in runtime.g: DWARF when present, else a per-version table.
    go_goid_offset: int | None
    # --- extras (not part of the minimal contract, but useful to callers) ---
    go_text_start: int | None = None  # moduledata.text: base of pclntab entry offsets
    go_pclntab_addr: int | None = None  # vaddr of the pcHeader
    go_moduledata_addr: int | None = None  # vaddr of runtime.firstmoduledata
    go_goid_source: str | None = None  # "dwarf" | "table" | None
    go_types_end: int | None = None  # moduledata.etypes: type descriptors lie in [base, end)
    # Module path -> version from the Go build info ("dep" and "=>" lines; works stripped).
    go_modules: dict[str, str] = field(default_factory=dict)
    entry_point: int = 0  # ELF e_entry
    segments: tuple[Segment, ...] = field(default=(), repr=False)
    # The name to show when `path` is /proc/PID/exe: what the link points at, which may not
    # exist in this mount namespace (an agent's container, a pod's root), so never opened.
    shown: str | None = None
    _by_name: dict[str, Function] | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The binary as messages name it."""
        return self.shown or self.path

    def function_named(self, name: str) -> Function | None:
        """Exact-name lookup (first function with that name)."""
        if self._by_name is None:
            by_name: dict[str, Function] = {}
            for fn in self.functions:
                by_name.setdefault(fn.name, fn)
            self._by_name = by_name
        return self._by_name.get(name)

    def function_at(self, addr: int) -> Function | None:
        """The function whose [entry, end) contains ``addr`` (binary search)."""
        import bisect

        fns = self.functions
        i = bisect.bisect_right(fns, addr, key=lambda f: f.entry) - 1
        if i >= 0 and fns[i].entry <= addr < fns[i].end:
            return fns[i]
        return None

    def file_offset(self, vaddr: int, size: int = 1) -> int:
        """File offset backing [vaddr, vaddr+size); BinaryError if not file-backed."""
        for seg in self.segments:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return seg.offset + (vaddr - seg.vaddr)
        raise BinaryError(
            f"address {vaddr:#x} (+{size}) is not backed by file data in {self.path}; "
            "the binary may be truncated or the address wrong"
        )
