"""A Go method's signature from the runtime's own type data: works on stripped binaries.

A method that is called through an interface (every reconciler: controller-runtime calls it
as reconcile.Reconciler) has an itab, `{inter, type, hash, fun[]}`, whose `fun` words hold
the method's address; the interface type names each method and its func type, whose
parameter and result types are complete type descriptors (sizes, fields by name). Static
itabs sit in the file's data with absolute addresses (non-PIE builds, Go's default); a PIE
build leaves them to relocations, and then nothing is found here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import gotypes
from .elfimage import ElfImage
from .model import BinaryError, BinaryInfo, Function

MAX_METHODS = 64  # an interface's method index searched back from a fun word


@dataclass(frozen=True)
class Signature:
    interface: str  # the interface type's name, e.g. "reconcile.TypedReconciler[...]"
    params: tuple[int, ...]  # parameter type descriptor addresses (static)
    results: tuple[int, ...]
    concrete: int = 0  # the type descriptor of the receiver type the itab is for
    interface_pkg: str = ""  # the interface type's package path


def method_signatures(img: ElfImage, info: BinaryInfo, fn: Function) -> list[Signature]:
    """Every interface method implemented by `fn`, with its func type; [] if none is found
    (the method is never called through an interface, or the binary is PIE)."""
    base, end = info.go_types_base, info.go_types_end
    if base is None or end is None or info.pie:
        return []
    method = fn.name.rpartition(".")[2]
    read = img.read
    needle = struct.pack("<Q", fn.entry)
    found: dict[tuple, Signature] = {}
    for sec in img.section_list:
        if not sec.alloc or sec.exec or not sec.has_file_data:
            continue
        lo, hi = sec.offset, min(sec.offset + sec.size, len(img.data))
        i = img.data.find(needle, lo, hi)
        while i != -1:
            addr = sec.addr + (i - lo)
            if addr % 8 == 0:
                sig = _itab_method(read, base, end, addr, method)
                if sig is not None:
                    found[(sig.interface, sig.params, sig.results, sig.concrete)] = sig
            i = img.data.find(needle, i + 1, hi)
    return list(found.values())


def _itab_method(read, base: int, end: int, fun_word: int, method: str) -> Signature | None:
    """If `fun_word` is fun[k] of an itab, the interface method k when it is named `method`."""
    for k in range(MAX_METHODS):
        itab = fun_word - gotypes.ITAB_FUN - 8 * k
        try:
            inter, typ = struct.unpack("<QQ", read(itab, 16))
            if not (base <= inter < end and base <= typ < end):
                continue
            if gotypes.type_kind(read, inter) != gotypes.KIND_INTERFACE:
                continue
            methods = gotypes.interface_methods(read, base, inter)
            if k >= len(methods) or methods[k][0] != method:
                continue
            params, results = gotypes.func_signature(read, methods[k][1])
            return Signature(gotypes.type_name(read, base, inter), tuple(params),
                             tuple(results), typ, gotypes.pkg_path(read, base, inter) or "")
        except (BinaryError, gotypes.TypeDecodeError, struct.error, ValueError):
            continue
    return None
