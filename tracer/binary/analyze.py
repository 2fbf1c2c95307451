"""Static analysis entry points: what is this executable and where are its functions."""

from __future__ import annotations

import difflib
import re

from . import gobuildinfo, goruntime
from .elfimage import ElfImage
from .gopclntab import PclnTab, find_pclntab
from .model import BinaryError, BinaryInfo, Function


def analyze(path: str) -> BinaryInfo:
    """Read ``path`` once (mmap) and describe it. BinaryError for unusable files."""
    with ElfImage(path) as img:
        has_symtab = img.has_symbols(".symtab")
        has_dwarf = ".debug_info" in img.sections or ".zdebug_info" in img.sections
        info = BinaryInfo(
            path=path, language="native", go_version=None, pie=img.pie,
            has_symtab=has_symtab, has_dwarf=has_dwarf, build_id=gobuildinfo.build_id(img),
            functions=[], go_types_base=None, go_goid_offset=None,
            entry_point=img.entry_point, segments=img.segments,
        )
        bi = gobuildinfo.read_buildinfo(img)
        pcln = find_pclntab(img) if bi is not None or _maybe_go(img) else None
        if pcln is not None:
            info.language = "go"
            info.go_version = bi[0] if bi else None
            info.go_modules = gobuildinfo.modules(bi[1]) if bi else {}
            _fill_go(img, info, pcln)
        elif bi is not None:
            # Go build info but no pclntab: packed or obfuscated. Symbols are all we have.
            info.language, info.go_version = "go", bi[0]
            info.functions = _symbol_functions(img)
            info.go_goid_offset = goruntime.goid_offset_for_version(bi[0])
            info.go_goid_source = "table" if info.go_goid_offset is not None else None
        else:
            info.language = "rust" if _is_rust(img) else "native"
            info.functions = _symbol_functions(img)
    return info


def _maybe_go(img: ElfImage) -> bool:
    """Cheap hints that justify scanning for a pclntab when build info is missing."""
    return any(n in img.sections for n in (".gopclntab", ".data.rel.ro.gopclntab", ".go.module",
                                           ".note.go.buildid", ".gosymtab"))


def _fill_go(img: ElfImage, info: BinaryInfo, pcln: PclnTab) -> None:
    hdr = pcln.header
    md = goruntime.find_moduledata(img, hdr)
    info.go_pclntab_addr = hdr.addr
    if md is not None:
        info.go_moduledata_addr = md.addr
    # Base for entry offsets: moduledata.text is authoritative (Go 1.2x+ store 0 in
    # pcHeader.textStart, and external linkers put crt code before runtime.text).
    if md is not None:
        text = md.text
    elif hdr.text_start:
        text = hdr.text_start
    else:
        sym = img.symbol_value("runtime.text") if info.has_symtab else None
        text_sec = img.sections.get(".text")
        if sym is None and text_sec is None:
            raise BinaryError(f"{info.path}: cannot locate the Go text segment; "
                              "the binary looks corrupt")
        text = sym if sym is not None else text_sec.addr  # type: ignore[union-attr]
    info.go_text_start = text
    functions = pcln.functions(text)
    if info.has_symtab and functions:
        # cgo / externally linked binaries also contain C functions the pclntab does
        # not describe; take those (and only those) from the symbol table. Skip the
        # symbol walk when no executable bytes lie outside Go's text.
        lo = md.text if md is not None else functions[0].entry
        hi = md.etext if md is not None else functions[-1].end
        outside = any(s.exec and s.size and (s.addr < lo or s.addr + s.size > hi + 64)
                      for s in img.section_list)
        extra = [f for f in _symbol_functions(img) if not lo <= f.entry < hi] if outside else []
        if extra:
            functions = sorted(functions + extra, key=lambda f: f.entry)
    info.functions = functions
    if md is not None and md.types is not None:
        info.go_types_base = md.types
        info.go_types_end = md.etypes
    else:
        info.go_types_base = goruntime.types_base_from_sections(img)
    goid = goruntime.goid_offset_from_dwarf(img) if info.has_dwarf else None
    if goid is not None:
        info.go_goid_offset, info.go_goid_source = goid, "dwarf"
    else:
        goid = goruntime.goid_offset_for_version(info.go_version)
        info.go_goid_offset = goid
        info.go_goid_source = "table" if goid is not None else None


def _is_rust(img: ElfImage) -> bool:
    comment = img.sections.get(".comment")
    if comment is not None and b"rustc version" in bytes(img.section_data(comment)):
        return True
    # Panic locations embed "/rustc/<commit>/library/..." even in stripped builds.
    rodata = img.sections.get(".rodata")
    if rodata is not None and rodata.has_file_data:
        lo = rodata.offset
        if img.data.find(b"/rustc/", lo, min(lo + rodata.size, len(img.data))) != -1:
            return True
    return False


def _symbol_functions(img: ElfImage) -> list[Function]:
    table = ".symtab" if img.has_symbols(".symtab") else ".dynsym"
    seen: set[tuple[str, int]] = set()
    out: list[Function] = []
    for name, value, size in img.iter_func_symbols(table):
        if (name, value) not in seen:
            seen.add((name, value))
            out.append(Function(name, value, value + size))
    out.sort(key=lambda f: (f.entry, f.name))
    return out


# -- lookups -----------------------------------------------------------------

def find_functions(info: BinaryInfo, pattern: str) -> list[Function]:
    """Functions whose name matches ``pattern`` (re.search), sorted by entry."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise BinaryError(f"invalid function pattern {pattern!r}: {e}; "
                          "escape regex characters such as ( ) * with a backslash") from None
    return [fn for fn in info.functions if rx.search(fn.name)]


_REGEX_META = re.compile(r"\\(.)|[\^$*+?{}\[\]|()]")


def _literal(pattern: str) -> str:
    """Best-effort literal text of a regex: drop metacharacters, unescape escapes."""
    return _REGEX_META.sub(lambda m: m.group(1) or "", pattern.replace(".*", " "))


def _last_component(name: str) -> str:
    # "example.com/fx/controllers.(*R).Reconcile" -> "controllers.(*R).Reconcile"
    return name.rsplit("/", 1)[-1]


def _identifier(name: str) -> str:
    # "example.com/fx/controllers.(*R).Reconcile" -> "Reconcile"
    return _last_component(name).rsplit(".", 1)[-1]


def nearest_names(info: BinaryInfo, pattern: str, n: int = 5) -> list[str]:
    """Up to ``n`` function names that look like what ``pattern`` meant.

    Case-insensitive substring hits come first (the commonest mistakes are case
    and a missing package path), then difflib similarity on the full name, on
    the last path component and on the bare identifier, best score first.
    """
    text = _literal(pattern).strip()
    if n <= 0 or not text:
        return []
    names = list(dict.fromkeys(fn.name for fn in info.functions))
    low = text.lower()
    result = sorted((nm for nm in names if low in nm.lower()), key=lambda nm: (len(nm), nm))[:n]
    if len(result) == n:
        return result
    scores: dict[str, float] = {}
    for key_of in (lambda s: s, _last_component, _identifier):
        groups: dict[str, list[str]] = {}
        for nm in names:
            groups.setdefault(key_of(nm), []).append(nm)
        query = key_of(text)
        for key in difflib.get_close_matches(query, list(groups), n=n, cutoff=0.6):
            ratio = difflib.SequenceMatcher(None, query, key).ratio()
            for nm in groups[key]:
                scores[nm] = max(scores.get(nm, 0.0), ratio)
    for nm in sorted(scores, key=lambda nm: (-scores[nm], len(nm), nm)):
        if len(result) == n:
            break
        if nm not in result:
            result.append(nm)
    return result


def read_function_code(info: BinaryInfo, fn: Function) -> bytes:
    """The file bytes of [fn.entry, fn.end)."""
    size = fn.end - fn.entry
    if size <= 0:
        return b""
    off = info.file_offset(fn.entry, size)
    try:
        with open(info.path, "rb") as fh:
            fh.seek(off)
            data = fh.read(size)
    except OSError as e:
        raise BinaryError(f"cannot read {info.path}: {e.strerror}; "
                          "was the binary moved or rebuilt?") from None
    if len(data) != size:
        raise BinaryError(f"{info.path} is shorter than expected; was it rebuilt during analysis?")
    return data
