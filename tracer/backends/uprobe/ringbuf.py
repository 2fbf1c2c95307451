"""The kernel's trace ring buffer read raw: pages from per_cpu/cpuN/trace_pipe_raw, events
laid out as events/<group>/<name>/format says.

Why raw: the text trace_pipe makes the kernel format every event and wakes its reader on each
one, which on a small machine takes the operator's CPU; raw pages are read in batches, carry
nanosecond timestamps and are decoded here with offsets, not regexes.

Page (events/header_page): u64 timestamp, then a commit word (bytes of data; its top bits flag
events lost before this page), then the data. Event (events/header_event): a u32 with
type_len (low 5 bits) and time_delta (27 bits), then data or more header.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

PADDING, TIME_EXTEND, TIME_STAMP = 29, 30, 31
TS_SHIFT = 27
MISSED_EVENTS = 1 << 31  # RB_MISSED_EVENTS: the kernel lost events before this page
COMMIT_MASK = (1 << 30) - 1  # below RB_MISSED_EVENTS and RB_MISSED_STORED
ABS_TS_BITS = (1 << 59) - 1  # an absolute stamp holds the low 59 bits (rb_fix_abs_ts)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FIELD = re.compile(r"field:(.+?)\s+(\w+)(\[\d*\])?;\s*offset:(\d+);\s*size:(\d+);"
                    r"\s*signed:(\d+);")


@dataclass(frozen=True)
class Field:
    offset: int
    size: int
    signed: bool
    array: bool


@dataclass(frozen=True)
class PageLayout:
    """Where a page's parts are, from events/header_page (the same on every kernel so far,
    but read rather than assumed)."""

    timestamp: int = 0
    commit: int = 8
    commit_size: int = 8
    data: int = 16


def page_layout(root: str) -> PageLayout:
    with open(os.path.join(root, "events", "header_page")) as f:
        fields = {name: (int(off), int(size)) for _t, name, _a, off, size, _s
                  in _FIELD.findall(f.read())}
    return PageLayout(fields["timestamp"][0], fields["commit"][0], fields["commit"][1],
                      fields["data"][0])


def event_format(root: str, group: str, event: str) -> tuple[int, dict[str, Field]]:
    """(event id, fields by name) of one trace event."""
    folder = os.path.join(root, "events", group, event)
    with open(os.path.join(folder, "id")) as f:
        event_id = int(f.read())
    with open(os.path.join(folder, "format")) as f:
        fields = {name: Field(int(off), int(size), sign == "1", bool(array))
                  for _type, name, array, off, size, sign in _FIELD.findall(f.read())}
    return event_id, fields


def events(page: bytes, layout: PageLayout) -> tuple[Iterator[tuple[int, memoryview]], bool]:
    """(each data event as (timestamp ns, its bytes), whether events were lost before it)."""
    commit = int.from_bytes(page[layout.commit:layout.commit + layout.commit_size], "little")
    return _walk(page, layout, commit & COMMIT_MASK), bool(commit & MISSED_EVENTS)


def _walk(page: bytes, layout: PageLayout, size: int) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(page)
    ts = _U64.unpack_from(page, layout.timestamp)[0]
    pos = layout.data
    end = min(len(page), layout.data + size)
    while pos + 4 <= end:
        word = _U32.unpack_from(page, pos)[0]
        type_len, delta = word & 0x1F, word >> 5
        if type_len == 0:
            length = _U32.unpack_from(page, pos + 4)[0]  # bytes from array[1], plus 4
            ts += delta
            yield ts, view[pos + 8:pos + 4 + length]
            pos += 4 + length
        elif type_len <= 28:
            ts += delta
            yield ts, view[pos + 4:pos + 4 + type_len * 4]
            pos += 4 + type_len * 4
        elif type_len == TIME_EXTEND:
            ts += (_U32.unpack_from(page, pos + 4)[0] << TS_SHIFT) + delta
            pos += 8
        elif type_len == TIME_STAMP:
            stamp = (_U32.unpack_from(page, pos + 4)[0] << TS_SHIFT) + delta
            ts = (ts & ~ABS_TS_BITS) | stamp
            pos += 8
        else:  # padding: a discarded event (its length follows) or the page's end
            if delta == 0:
                return
            pos += 4 + _U32.unpack_from(page, pos + 4)[0]
