"""Unsigned LEB128, which Go calls uvarint: build info, type names and DWARF all use it."""

from __future__ import annotations


def uvarint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a Go/protobuf uvarint; returns (value, next_pos). ValueError if truncated."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
