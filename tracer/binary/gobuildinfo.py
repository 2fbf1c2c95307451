"""Go build info (``runtime/debug.BuildInfo`` blob) and ELF build-id notes.

The linker leaves a 32-byte header, 16-byte aligned, usually in ``.go.buildinfo``:

    "\\xff Go buildinf:" (14) | ptrSize u8 | flags u8 | versPtr | modPtr

flags bit 1 set (Go 1.18+): the version and module strings follow the header
inline, each as uvarint length + bytes. Otherwise (older toolchains) versPtr and
modPtr point at Go string headers (ptr, len); flags bit 0 means big-endian.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

from .elfimage import SHF_WRITE, ElfImage
from .model import BinaryError
from .varint import uvarint

MAGIC = b"\xff Go buildinf:"
HEADER_SIZE = 32
_ALIGN = 16

Reader = Callable[[int, int], bytes]


def decode_blob(blob: bytes, read: Reader) -> tuple[str, str] | None:
    """(go version, raw module info) from a blob starting at the magic.

    ``blob`` must extend past the header far enough for the inline strings;
    ``read(vaddr, n)`` resolves pointers for the pre-1.18 pointer form.
    """
    if len(blob) < HEADER_SIZE or not blob.startswith(MAGIC):
        return None
    ptr_size, flags = blob[14], blob[15]
    try:
        if flags & 2:
            n, pos = uvarint(blob, HEADER_SIZE)
            vers = blob[pos:pos + n]
            if len(vers) != n:
                return None
            m, pos2 = uvarint(blob, pos + n)
            mod = blob[pos2:pos2 + m]
        else:
            if ptr_size not in (4, 8):
                return None
            two_words = struct.Struct(("<" if not flags & 1 else ">")
                                      + ("QQ" if ptr_size == 8 else "II"))
            vers_ptr, mod_ptr = two_words.unpack_from(blob, 16)

            def go_string(addr: int) -> bytes:
                if addr == 0:
                    return b""
                data, length = two_words.unpack(read(addr, 2 * ptr_size))
                return read(data, length) if length else b""

            vers, mod = go_string(vers_ptr), go_string(mod_ptr)
    except (ValueError, struct.error, BinaryError):
        return None
    version = vers.decode("utf-8", "replace")
    return (version, mod.decode("utf-8", "replace")) if version else None


def read_buildinfo(img: ElfImage) -> tuple[str, str] | None:
    """Find and decode the build info blob (works on stripped binaries)."""
    sec = img.sections.get(".go.buildinfo")
    candidates = [sec] if sec is not None and sec.has_file_data else []
    # Without the section (odd linkers, section headers removed) the blob sits near the
    # start of the writable data, which is where debug/buildinfo looks too.
    candidates += [s for s in img.section_list
                   if s.alloc and s.flags & SHF_WRITE and s.has_file_data and s is not sec]
    for s in candidates:
        lo, hi = s.offset, min(s.offset + s.size, len(img.data))
        i = img.data.find(MAGIC, lo, hi)
        while i != -1:
            if (s.addr + i - lo) % _ALIGN == 0:
                got = decode_blob(bytes(img.data[i:min(i + (1 << 20), hi)]), img.read)
                if got is not None:
                    return got
            i = img.data.find(MAGIC, i + 1, hi)
    return None


def modules(raw: str) -> dict[str, str]:
    """Module path -> version of every dependency in the raw module info ("dep PATH VERSION"
    lines; a "=>" replacement that follows gives the version really built)."""
    out: dict[str, str] = {}
    last = None
    for line in raw.splitlines():
        parts = line.split("\t")
        if parts[0] == "dep" and len(parts) >= 3:
            last = parts[1]
            out[last] = parts[2]
        elif parts[0] == "=>" and last is not None and len(parts) >= 3 and parts[2]:
            out[last] = parts[2]
    return out


_VERSION_RE = re.compile(r"go(\d+)\.(\d+)")


def major_minor(go_version: str | None) -> tuple[int, int] | None:
    """(1, 19) from "go1.19.8", "go1.27rc1", "devel go1.28-abcdef ..."."""
    if not go_version:
        return None
    m = _VERSION_RE.search(go_version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _note_desc(img: ElfImage, section: str, owner: bytes, ntype: int) -> bytes | None:
    sec = img.sections.get(section)
    if sec is None or not sec.has_file_data:
        return None
    data = bytes(img.section_data(sec))
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, typ = struct.unpack_from("<III", data, pos)
        name_start = pos + 12
        desc_start = name_start + (namesz + 3) // 4 * 4
        desc = data[desc_start:desc_start + descsz]
        if data[name_start:name_start + namesz].rstrip(b"\0") == owner and typ == ntype:
            return desc
        pos = desc_start + (descsz + 3) // 4 * 4
    return None


def build_id(img: ElfImage) -> str | None:
    """GNU build-id (hex) if present, else the Go build ID string."""
    gnu = _note_desc(img, ".note.gnu.build-id", b"GNU", 3)
    if gnu:
        return gnu.hex()
    go = _note_desc(img, ".note.go.buildid", b"Go", 4)
    if go:
        return go.decode("utf-8", "replace")
    return None
