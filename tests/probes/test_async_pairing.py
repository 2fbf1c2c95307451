"""Rust futures' hits as kernel uprobes give them (a poll's RET names no future) and as gdb
gives them, on hand-written sequences: each RET goes to its thread's innermost open poll,
nested polls of two futures, a future's address reused after a Ready or a drop, a panic that
unwinds a poll; and the rust-poll decoders' fetch-args and values (tracer.probes.decoders)."""

from __future__ import annotations

from tracer.probes import decoders
from tracer.probes.plan import DROP, KEY_FUTURE, POLL, POLL_EXIT, SPAN_RECONCILE, Plan, Point
from tracer.session.pairing import Hit, Pairer

# W: a wrapper whose poll holds the body (state unknown: ended by its drop, as a kube-rs
# release build); S: a future whose Poll says Ready (as with DWARF), polled inside W's poll.
POINTS = [
    Point(0x10, "W", POLL, KEY_FUTURE, "rust-poll:-:-", SPAN_RECONCILE),
    Point(0x18, "W", POLL_EXIT, KEY_FUTURE, "rust-poll-exit:-:-:0:r", SPAN_RECONCILE),
    Point(0x20, "W", DROP, KEY_FUTURE, None, SPAN_RECONCILE),
    Point(0x30, "S", POLL, KEY_FUTURE, "rust-poll:8:1", SPAN_RECONCILE),
    Point(0x38, "S", POLL_EXIT, KEY_FUTURE, "rust-poll-exit:8:1:1:r", SPAN_RECONCILE),
]
INDEX = {(p.function, p.role): i for i, p in enumerate(POINTS)}
# S's Poll<Result<(), E>> in one byte: 0 Ready(Ok), 1 Ready(Err), 2 Pending.
RESULTS = {"S": {"poll": {"off": 0, "size": 1, "values": {"2": "Pending"}, "default": "Ready"},
                 "ready": "Ready",
                 "result": {"off": 0, "size": 1, "values": {"0": "Ok"}, "default": "Err"},
                 "error": None, "error_type": "E", "messages": {}, "requeue": None, "read": 1}}
READY_OK, PENDING = [None, "00", None], [None, "02", None]


def run(hits, gdb: bool = False) -> tuple[list[dict], Pairer]:
    """hits: (ts, function, role, thread, future, value); a RET's future is dropped unless
    `gdb` (whose agent names it)."""
    spans: list[dict] = []
    plan = Plan("b", "native", "kube-rs", ["W", "S"], POINTS, rust_results=RESULTS)
    pairer = Pairer(plan, spans.append)
    for ts, function, role, lwp, future, value in hits:
        i = INDEX[(function, role)]
        key = future if role != POLL_EXIT or gdb else None
        pairer.feed(Hit(ts, POINTS[i], i, lwp, key, 0, value))
    pairer.close_all()
    return spans, pairer


def test_returns_go_to_the_threads_innermost_poll():
    # Two wrappers polled on two threads, each holding a poll of S; W1 moves threads.
    hits = [
        (100, "W", POLL, 1, 0xA00, None), (101, "S", POLL, 1, 0xB00, 0),
        (105, "W", POLL, 2, 0xC00, None), (106, "S", POLL, 2, 0xD00, 0),
        (110, "S", POLL_EXIT, 1, 0xB00, PENDING), (111, "W", POLL_EXIT, 1, 0xA00, None),
        (120, "S", POLL_EXIT, 2, 0xD00, READY_OK), (121, "W", POLL_EXIT, 2, 0xC00, None),
        (122, "W", DROP, 2, 0xC00, None),
        (200, "W", POLL, 2, 0xA00, None), (201, "S", POLL, 2, 0xB00, 3),
        (210, "S", POLL_EXIT, 2, 0xB00, READY_OK), (211, "W", POLL_EXIT, 2, 0xA00, None),
        (212, "W", DROP, 2, 0xA00, None),
    ]
    for gdb in (False, True):
        spans, pairer = run(hits, gdb)
        got = {(s["function"], s["future"]): s for s in spans}
        assert len(spans) == 4 and pairer.stats.orphan_exits == 0
        w1, s1 = got[("W", "0xa00")], got[("S", "0xb00")]
        assert (w1["start_ns"], w1["end_ns"], w1["polls"], w1["threads"]) == \
            (100, 211, 2, [1, 2])
        # W's state is not read: Ready or cancelled is not told apart, so no status.
        assert w1["cpu_ns"] == 11 + 11 and w1["status"] is None
        assert (s1["start_ns"], s1["end_ns"], s1["polls"], s1["threads"]) == (101, 210, 2, [1, 2])
        assert s1["result"] == {"ok": True} and s1["status"] == "ok"
        w2 = got[("W", "0xc00")]
        assert (w2["end_ns"], w2["polls"], w2["threads"]) == (121, 1, [2])


def test_an_address_reused_after_ready_or_drop_is_a_new_future():
    spans, _ = run([
        (100, "W", POLL, 1, 0xA00, None), (110, "W", POLL_EXIT, 1, 0xA00, None),
        (111, "W", DROP, 1, 0xA00, None),
        (200, "W", POLL, 2, 0xA00, None), (210, "W", POLL_EXIT, 2, 0xA00, None),
        (300, "W", POLL, 1, 0xA00, None), (310, "W", POLL_EXIT, 1, 0xA00, None),
        (311, "W", DROP, 1, 0xA00, None),
        (400, "S", POLL, 1, 0xB00, 0), (410, "S", POLL_EXIT, 1, 0xB00, READY_OK),
        (500, "S", POLL, 1, 0xB00, 0), (510, "S", POLL_EXIT, 1, 0xB00, READY_OK),
    ])
    w = sorted((s for s in spans if s["function"] == "W"), key=lambda s: s["start_ns"])
    assert [(s["start_ns"], s["end_ns"], s["polls"]) for s in w] == [(100, 110, 1),
                                                                      (200, 310, 2)]
    s = sorted((s for s in spans if s["function"] == "S"), key=lambda s: s["start_ns"])
    assert [(x["start_ns"], x["end_ns"]) for x in s] == [(400, 410), (500, 510)]


def test_a_poll_that_unwound_leaves_the_stack():
    # W at 0xC00 is polled inside W at 0xA00's poll, panics and unwinds (no RET), and is
    # dropped: the next return on the thread is 0xA00's, not the unwound poll's.
    spans, pairer = run([
        (100, "W", POLL, 1, 0xA00, None), (101, "W", POLL, 1, 0xC00, None),
        (102, "W", DROP, 1, 0xC00, None),
        (110, "W", POLL_EXIT, 1, 0xA00, None), (111, "W", DROP, 1, 0xA00, None),
    ])
    got = {s["future"]: s for s in spans}
    assert (got["0xa00"]["end_ns"], got["0xa00"]["status"]) == (110, None)
    # Dropped inside its poll: it panicked, and ends there.
    assert (got["0xc00"]["end_ns"], got["0xc00"]["status"]) == (102, "panic")
    assert pairer.stats.orphan_exits == 0


def test_rust_poll_fetchargs_and_values():
    request = {"namespace": [["o", 8], ["d"], ["o", 16], ["s", 8, 16, None]],
               "name": [["o", 8], ["d"], ["s", 0, 8,
                                            {"off": 0, "size": 8, "values": {"0": "None"},
                                             "default": "Some"}]]}
    args = decoders.rust_fetchargs("rust-poll:138:1", POLL, request)
    assert args[:2] == ["fut=%si:u64", "st=+138(%si):u8"]
    assert "rq0=+0(+24(+8(%si))):u64[32]" in args and "rq0l=+32(+8(%si)):s64" in args
    assert "rq1o=+0(+8(%si)):u64" in args and "rq1l=+8(+8(%si)):s64" in args
    assert decoders.rust_fetchargs("rust-poll-rdi:-:-", POLL) == ["fut=%di:u64"]
    assert decoders.rust_fetchargs(None, DROP) == ["fut=%di:u64"]
    assert decoders.rust_fetchargs("rust-poll-exit:-:-:0:r", POLL_EXIT) == []
    assert decoders.rust_fetchargs("rust-poll-exit:138:1:20:m", POLL_EXIT) == \
        ["res=+0(%ax):u64[3]"]
    text = b"ns-1".ljust(256, b"\0"), b"w0-ok".ljust(256, b"\0")
    fetched = {"fut": 0xA00, "st": 0, "rq0": text[0], "rq0l": 4, "rq1": text[1], "rq1l": 5,
               "rq1o": 7}
    assert decoders.rust_from_fetched("rust-poll:138:1", POLL, fetched, True, request) == \
        (0xA00, [0, "ns-1", "w0-ok"])
    # Not a first poll: the future's arguments are gone, nothing is read from them.
    assert decoders.rust_from_fetched("rust-poll:138:1", POLL, {**fetched, "st": 3}, True,
                                      request) == (0xA00, 3)
    assert decoders.rust_from_fetched("rust-poll:138:1", POLL, {**fetched, "rq1o": 0}, True,
                                      request) == (0xA00, [0, "ns-1", None])
    raw = bytes(range(24))
    assert decoders.rust_from_fetched("rust-poll-exit:138:1:20:m", POLL_EXIT, {"res": raw},
                                      True) == (None, [None, raw[:20].hex(), None])
    assert decoders.rust_from_fetched("rust-poll-exit:-:-:0:r", POLL_EXIT, {}, True) == \
        (None, [None, None, None])


# D: a wrapper whose inlined body's state the tracer found (tracer.binary.async_state: at
# +178 from the wrapper's self, four states), read at each poll's entry, after each poll
# (gdb only) and at the drop.
D_POINTS = [
    Point(0x40, "D", POLL, KEY_FUTURE, "rust-poll:178:1", SPAN_RECONCILE),
    Point(0x48, "D", POLL_EXIT, KEY_FUTURE, "rust-poll-exit:178:1:0:r", SPAN_RECONCILE),
    Point(0x50, "D", DROP, KEY_FUTURE, "rust-drop:178:1:4", SPAN_RECONCILE),
]


def run_d(hits, gdb: bool = False) -> list[dict]:
    """hits: (ts, role, thread, future, value); at a RET uprobes give no future and no state
    ([None, None, None]), gdb the state after the poll."""
    spans: list[dict] = []
    plan = Plan("b", "native", "kube-rs", ["D"], D_POINTS)
    pairer = Pairer(plan, spans.append)
    roles = {p.role: i for i, p in enumerate(D_POINTS)}
    for ts, role, lwp, future, value in hits:
        i = roles[role]
        if role == POLL_EXIT and not gdb:
            future, value = None, [None, None, None]
        pairer.feed(Hit(ts, D_POINTS[i], i, lwp, future, 0, value))
    pairer.close_all()
    return sorted(spans, key=lambda s: s["start_ns"])


def test_the_drop_state_tells_completed_cancelled_and_panic():
    exit_pending, exit_ready = [3, None, None], [1, None, None]
    hits = [
        # completed: two polls, Ready at 112, dropped right after
        (100, POLL, 1, 0xA00, 0), (101, POLL_EXIT, 1, 0xA00, exit_pending),
        (110, POLL, 2, 0xA00, 3), (112, POLL_EXIT, 2, 0xA00, exit_ready),
        (113, DROP, 2, 0xA00, 1),
        # aborted: suspended at its await when its JoinHandle is dropped
        (200, POLL, 1, 0xB00, 0), (201, POLL_EXIT, 1, 0xB00, exit_pending),
        (250, DROP, 2, 0xB00, 3),
        # panicked inside its second poll (no RET), dropped by the runtime after unwinding
        (300, POLL, 1, 0xC00, 0), (301, POLL_EXIT, 1, 0xC00, exit_pending),
        (310, POLL, 1, 0xC00, 3), (315, DROP, 1, 0xC00, 2),
    ]
    for gdb in (False, True):
        got = [(s["future"], s["end_ns"], s["polls"], s["status"]) for s in run_d(hits, gdb)]
        assert got == [("0xa00", 112, 2, "completed"), ("0xb00", 250, 1, "cancelled"),
                       ("0xc00", 315, 2, "panic")], gdb


def test_a_drop_state_that_disagrees_gives_no_status():
    pending = [3, None, None]
    hits = [
        # Panicked, yet its last poll returned: not told
        (100, POLL, 1, 0xA00, 0), (101, POLL_EXIT, 1, 0xA00, pending), (102, DROP, 1, 0xA00, 2),
        # A value the body does not have (it has states 0 to 3)
        (200, POLL, 1, 0xB00, 0), (201, POLL_EXIT, 1, 0xB00, pending), (202, DROP, 1, 0xB00, 7),
        # Unreadable at the drop
        (300, POLL, 1, 0xC00, 0), (301, POLL_EXIT, 1, 0xC00, pending),
        (302, DROP, 1, 0xC00, None),
        # Suspended, but dropped inside a poll that never returned
        (400, POLL, 1, 0xD00, 0), (402, DROP, 1, 0xD00, 3),
        # Left pending, its drop missed (events lost): a new future at its address ends it,
        # not told how
        (500, POLL, 1, 0xE00, 0), (501, POLL_EXIT, 1, 0xE00, pending),
        (600, POLL, 1, 0xE00, 0), (601, POLL_EXIT, 1, 0xE00, pending),
    ]
    got = [(s["future"], s["end_ns"], s["status"]) for s in run_d(hits)]
    assert got == [("0xa00", 101, None), ("0xb00", 201, None), ("0xc00", 301, None),
                   ("0xd00", 402, None), ("0xe00", 501, None), ("0xe00", None, "unfinished")]


def test_rust_drop_fetchargs_and_values():
    assert decoders.rust_fetchargs("rust-drop:178:1:4", DROP) == \
        ["fut=%di:u64", "st=+178(%di):u8"]
    assert decoders.rust_from_fetched("rust-drop:178:1:4", DROP, {"fut": 0xA00, "st": 3},
                                      True) == (0xA00, 3)
    assert decoders.rust_from_fetched(None, DROP, {"fut": 0xA00}, True) == (0xA00, None)
    memory = {0xA00 + 178: b"\x01"}
    assert decoders.drop_state("rust-drop:178:1:4", lambda a, n: memory[a], 0xA00) == 1
    assert decoders.drop_state(None, lambda a, n: memory[a], 0xA00) is None
    said = {v: decoders.ended_by_state("rust-drop:178:1:4", v) for v in (0, 1, 2, 3, 4, None)}
    assert said == {0: "cancelled", 1: "completed", 2: "panic", 3: "cancelled", 4: None,
                    None: None}
    # A drop with no state decoder says nothing.
    assert decoders.ended_by_state(None, 1) is None
