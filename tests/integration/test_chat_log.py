"""The log is the chat service's database: rooms load from their tail, history and recovery past
what a room keeps are read from its subject, and only a bounded number of rooms stay in memory.

Each answer from the log is checked against a room that keeps everything (``Room(keep=None)``,
the reference), on the in-memory bus and on a real nats-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from services.chat.room import Room
from services.chat.roomlog import RoomLog
from services.chat.rooms import CATCH_UP
from services.chat.service import ChatService
from shared import subjects
from shared.bus.memory import MemoryBus
from shared.bus.port import Bus, Entry, Message, Unavailable
from shared.config import load_settings
from shared.schemas.commands import HistoryRequest, Origin, PostMessage
from shared.schemas.events import ChatMessagePosted, UserJoined, UserLeft, encode_event
from shared.schemas.wire import encode
from shared.timefmt import now_ms
from tests.bus_support import Tap
from tests.conftest import T

ROOMS = ("a", "b", "c", "d")
N = 40  # messages per room, interleaved in the log with the others' and some garbage
# "d" is uneven: half its messages early in the log, half late (interpolation guesses wrong)


def message(ctx: str, seq: int, ts: int) -> ChatMessagePosted:
    return ChatMessagePosted(
        contextId=ctx,
        ts=ts,
        messageId=f"{ctx}{seq}",
        seq=seq,
        userId="u",
        userName="U",
        content=f"{ctx} says {seq}",
        clientId=f"k{ctx}{seq}",
    )


async def fill(bus: Bus, start_ts: int) -> dict[str, Room]:
    """The log, and the reference rooms that keep everything."""
    ref = {ctx: Room(ctx) for ctx in ROOMS}
    for i in range(1, N + 1):
        for ctx in ROOMS[:3]:
            ev = message(ctx, i, start_ts + 1000 * i)
            done = await bus.append(
                subjects.chat_messages(ctx), encode_event(ev), msg_id=ev.messageId
            )
            assert ref[ctx].apply(ev, done.seq)
        if i % 13 == 0:  # something undecodable on a room's subject now and then
            junk = await bus.append(subjects.chat_messages("b"), b"{not json", msg_id=f"j{i}")
            ref["b"].skip(junk.seq)
        if i < 3 or i > N - 18:
            for _ in range(N // 20):
                d = ref["d"].seq + 1
                ev = message("d", d, start_ts + 1000 * d)
                done = await bus.append(
                    subjects.chat_messages("d"), encode_event(ev), msg_id=f"d{d}"
                )
                assert ref["d"].apply(ev, done.seq)
    assert ref["d"].seq == N
    return ref


# (limit, cursor kind, message number the cursor names)
CURSORS: list[tuple[int, str, int]] = [
    (10, "none", 0),
    (50, "none", 0),
    (5, "seq", 1),
    (5, "seq", 2),
    (7, "seq", 20),
    (100, "seq", 30),
    (3, "seq", 999),
    (4, "ts", 1),
    (4, "ts", 17),
    (6, "ts", 41),
    (6, "both", 25),
]


async def test_history_and_recovery_from_the_log_match_a_room_that_keeps_everything(
    bus: Bus,
) -> None:
    t0 = 1_700_000_000_000
    ref = await fill(bus, t0)
    settings = load_settings({"AG_CHAT_RECENT_MESSAGES": "4", "AG_HEARTBEAT_S": "60"})
    svc = ChatService(settings, bus)
    for ctx in ROOMS:
        small = await svc.rooms.load(ctx)  # keeps 4..8 newest: most pages need the log
        assert small.seq == N and len(small.messages) < 8
        assert small.last_subject_seq == ref[ctx].last_subject_seq
        for cached in (True, False):
            if not cached:
                svc.rooms.rooms.clear()  # not in memory at all: everything from the log
            for limit, by, at in CURSORS:
                before_ms = t0 + 1000 * at if by in ("ts", "both") else None
                before_seq = at if by in ("seq", "both") else None
                req = HistoryRequest(ctx, limit=limit, beforeMs=before_ms, beforeSeq=before_seq)
                got = json.loads(await svc._history(req))
                want, more = ref[ctx].history(limit, before_ms, before_seq)
                assert [m["seq"] for m in got["messages"]] == [m.seq for m in want], (
                    limit,
                    by,
                    at,
                )
                assert got["hasMore"] == more and got["lastSeq"] == N
            for after, cap in [(0, 100), (0, 10), (3, 50), (35, 10), (N, 5), (N + 3, 5)]:
                got = json.loads(await svc._history(HistoryRequest(ctx, afterSeq=after, cap=cap)))
                want, truncated = ref[ctx].after(after, cap)
                assert [m["seq"] for m in got["messages"]] == [m.seq for m in want]
                assert got["truncated"] == truncated


async def test_seek_finds_the_first_message_at_or_past_a_key(bus: Bus) -> None:
    await fill(bus, 0)
    log = RoomLog(bus, "b")
    for target in (-5, 1, 2, 13, 14, 39, 40):
        hit = await log.seek(lambda e: e.seq, target)
        assert hit is not None and hit.event.seq == max(target, 1)
    assert await log.seek(lambda e: e.seq, 41) is None
    assert await RoomLog(bus, "nobody").seek(lambda e: e.seq, 1) is None


async def test_from_seq_reads_a_rooms_messages_from_a_seq_on(bus: Bus) -> None:
    ref = await fill(bus, 0)
    for ctx in ROOMS:
        for seq in (-3, 1, 2, 17, 33, 39, 40, 41, 99):
            for count in (1, 5, 100):
                got = await RoomLog(bus, ctx).from_seq(seq, count)
                want = [m for m in ref[ctx].messages if m.seq >= seq][:count]
                assert [h.event for h in got] == want, (ctx, seq, count)
                assert [h.entry.seq for h in got] == [ref[ctx].log_seq(m.seq) for m in want]


def replied(tap: Tap, count: int) -> bool:
    return len(tap.of("ag.reply")) >= count


def post(ctx: str, cid: str) -> PostMessage:
    return PostMessage(
        requestId=uuid.uuid4().hex,
        contextId=ctx,
        origin=Origin("gw", "conn", "u", "U"),
        content="hello",
        messageType="text",
        clientId=cid,
        deadline=now_ms() + 5000,
    )


async def test_start_reads_no_messages_and_rooms_go_on_from_their_tail() -> None:
    bus = MemoryBus()
    await fill(bus, now_ms() - 1000 * (N + 1))  # recent: all in the dedup window
    settings = load_settings(
        {"AG_CHAT_RECENT_MESSAGES": "4", "AG_CHAT_CACHE_ROOMS": "2", "AG_HEARTBEAT_S": "60"}
    )
    svc = ChatService(settings, bus)
    tap = await Tap().watch(bus, subjects.gateway_replies("gw"))
    await svc.start()
    try:
        assert not svc.rooms.rooms  # nothing loaded at start
        # a frame id stored long before the newest four: still found (the dedup window)
        await bus.submit(subjects.chat_commands("a"), encode(post("a", "ka3")))
        await bus.submit(subjects.chat_commands("a"), encode(post("a", "new")))
        await tap.until(lambda: len(tap.of("ag.reply")) == 2)
        seqs = sorted(r["ok"]["seq"] for r in tap.of("ag.reply"))
        assert seqs == [3, N + 1]
        for ctx in ("b", "c"):
            count = len(tap.of("ag.reply")) + 1
            await bus.submit(subjects.chat_commands(ctx), encode(post(ctx, "x")))
            await tap.until(partial(replied, tap, count))
        assert len(svc.rooms.rooms) <= 2  # the least recently used room left memory
        assert {r["ok"]["seq"] for r in tap.of("ag.reply")[2:]} == {N + 1}
    finally:
        await svc.stop()


@pytest.mark.parametrize("snapshots", [False, True])
async def test_rooms_leaving_and_coming_back_keep_seq_and_dedup(
    memory_bus: MemoryBus, snapshots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many rooms through a cache of two, each keeping three messages: rooms are evicted and
    reloaded all the time (from their tail, or from the snapshot saved when they left), and
    every seq stays gapless and every re-sent id is answered with its first seq, never stored
    twice."""
    bus = memory_bus
    settings = load_settings(
        {"AG_CHAT_RECENT_MESSAGES": "3", "AG_CHAT_CACHE_ROOMS": "2", "AG_HEARTBEAT_S": "60"}
    )
    svc = ChatService(settings, bus)
    tap = await Tap().watch(bus, subjects.gateway_replies("gw"))
    reads = count_reads(bus, monkeypatch)
    await svc.start()
    rooms = [f"r{i}" for i in range(6)]
    try:
        sent = 0
        for round_ in range(8):
            for ctx in rooms:
                await bus.submit(subjects.chat_commands(ctx), encode(post(ctx, f"{ctx}-{round_}")))
                sent += 1
                if round_ >= 2:  # an id from two rounds ago, re-sent: long out of the three kept
                    again = f"{ctx}-{round_ - 2}"
                    await bus.submit(subjects.chat_commands(ctx), encode(post(ctx, again)))
                    sent += 1
                if snapshots:  # rooms waiting to be saved are bounded like those in memory
                    await tap.until(partial(replied, tap, sent))
                    assert len(svc.rooms.evicted) <= 2
                    await svc._save_rooms(in_memory=False)  # what the next beat does
                    assert not svc.rooms.evicted
            await tap.until(partial(replied, tap, sent))
            assert len(svc.rooms.rooms) <= 2 + 1  # the cap, give or take the room in use
        # From snapshots, a room that comes back reads none of its messages (nothing was
        # written since it left); from the tail, every reload reads them.
        assert (not reads) if snapshots else len(reads) > 10
        for ctx in rooms:
            stored = [h.event.seq for h in await RoomLog(bus, ctx).from_seq(1, 1000)]
            assert stored == list(range(1, 9)), ctx  # 8 posts, no doubles, no gaps
        by_id: dict[str, set[int]] = {}
        for reply in tap.of("ag.reply"):
            by_id.setdefault(reply["clientId"], set()).add(reply["ok"]["seq"])
        assert all(len(seqs) == 1 for seqs in by_id.values())  # a re-send gets the first seq
    finally:
        await svc.stop()


def count_reads(
    bus: Bus, monkeypatch: pytest.MonkeyPatch, wanted: Callable[[str], bool] | None = None
) -> list[tuple[str, list[int]]]:
    """Each read of the bus (``bus.read``) from now on, of the subjects ``wanted`` (by default
    rooms' message subjects): the subject and the sequences of the entries it returned."""
    reads: list[tuple[str, list[int]]] = []
    real = bus.read

    def rooms(subject: str) -> bool:
        return subject.startswith("ag.evt.chat.") and subject.endswith(".message")

    async def counting(subject: str, *args: Any, **kwargs: Any) -> list[Entry]:
        entries = await real(subject, *args, **kwargs)
        if (wanted or rooms)(subject):
            reads.append((subject, [e.seq for e in entries]))
        return entries

    monkeypatch.setattr(bus, "read", counting)
    return reads


def picture(room: Room) -> tuple[object, ...]:
    pairs, dedup = room.snapshot()
    return room.seq, room.base, room.last_subject_seq, pairs, sorted(dedup)


async def test_rooms_load_from_their_snapshot_and_the_log_after_it(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved room loads from its snapshot: no read of its messages when nothing came since,
    one short read when a few did, the tail again when many did; always the room its tail
    gives. History of a room not in memory answers from its snapshot too."""
    t0 = now_ms() - 1000 * (N + 30)  # every message in the dedup window
    ref = await fill(bus, t0)
    settings = load_settings({"AG_CHAT_RECENT_MESSAGES": "4", "AG_HEARTBEAT_S": "60"})
    first = ChatService(settings, bus)
    rooms = [await first.rooms.load(ctx) for ctx in ROOMS]
    assert await first.rooms.save(rooms) == len(ROOMS)
    assert await first.rooms.save(rooms) == 0  # unchanged since: not saved again
    reads = count_reads(bus, monkeypatch)

    async def check(ctx: str, most_reads: int, used: bool = True) -> None:
        svc = ChatService(settings, bus)
        reads.clear()
        restored = await svc.rooms.restore(RoomLog(bus, ctx))
        assert len(reads) <= most_reads
        tail = await svc.rooms.from_tail(
            RoomLog(bus, ctx), svc.rooms.horizon()
        )  # the reference: no snapshot
        if not used:
            assert restored is None  # too far behind: the load reads the tail
        else:
            assert restored is not None and picture(restored) == picture(tail)
            assert restored.saved < restored.last_subject_seq or most_reads == 0
        loaded = await svc.rooms.load(ctx)
        assert picture(loaded) == picture(tail)

    for ctx in ROOMS:
        await check(ctx, 0)
        svc = ChatService(settings, bus)
        reads.clear()
        for limit in (1, 4):  # the newest few: from the snapshot, nothing read
            got = json.loads(await svc._history(HistoryRequest(ctx, limit=limit)))
            want, more = ref[ctx].history(limit)
            assert [m["seq"] for m in got["messages"]] == [m.seq for m in want]
            assert got["hasMore"] == more and got["lastSeq"] == N
        got = json.loads(await svc._history(HistoryRequest(ctx, afterSeq=N - 2)))
        assert [m["seq"] for m in got["messages"]] == [N - 1, N]
        assert not reads
    # A few more messages (and something undecodable) after the snapshots...
    for ctx in ROOMS:
        for i in range(3):
            ev = message(ctx, N + 1 + i, now_ms())
            await bus.append(subjects.chat_messages(ctx), encode_event(ev), msg_id=f"x{ctx}{i}")
    await bus.append(subjects.chat_messages("b"), b"[1, 2", msg_id="junk-late")
    for ctx in ROOMS:
        await check(ctx, 1)
    # ...more than 2 x kept, but all in the one read that reaches the log's end: still used...
    for i in range(20):
        ev = message("b", N + 4 + i, now_ms())
        await bus.append(subjects.chat_messages("b"), encode_event(ev), msg_id=f"z{i}")
    await check("b", 1)
    # ...and many more in one room: reading on from its snapshot would cost more than its tail.
    for i in range(CATCH_UP + 10):
        ev = message("c", N + 4 + i, now_ms())
        await bus.append(subjects.chat_messages("c"), encode_event(ev), msg_id=f"y{i}")
    await check("c", 1, used=False)


async def test_a_stopping_service_saves_its_rooms(bus: Bus) -> None:
    from services.chat.room_snapshot import decode_room, snapshot_key

    settings = load_settings({"AG_HEARTBEAT_S": "60"})
    svc = ChatService(settings, bus)
    replies: asyncio.Queue[Message] = asyncio.Queue()
    await bus.subscribe(subjects.gateway_replies("gw"), replies.put)
    await svc.start()
    try:
        for ctx in ROOMS:
            await bus.submit(subjects.chat_commands(ctx), encode(post(ctx, "k")))
            reply = json.loads((await asyncio.wait_for(replies.get(), T(10))).data)
            assert reply["ok"]["seq"] == 1
        assert all([await bus.snapshot(snapshot_key(ctx)) is None for ctx in ROOMS])
    finally:
        await svc.stop()
    for ctx in ROOMS:
        data = await bus.snapshot(snapshot_key(ctx))
        assert data is not None
        room = decode_room(data, ctx, None)
        assert room.seq == 1 and room.duplicate_of("u", "k") == (room.messages[0].messageId, 1)


async def test_a_snapshot_the_log_does_not_agree_with_is_not_used(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot is believed only where the log has its newest message, with that id, at
    that sequence: garbage, another log's picture (same seqs, other messages) or one from past
    the log's end are ignored and the room is read from its tail."""
    import msgspec

    from services.chat.room_snapshot import encode_room, snapshot_key

    await fill(bus, now_ms() - 1000 * (N + 30))
    settings = load_settings({"AG_CHAT_RECENT_MESSAGES": "4", "AG_HEARTBEAT_S": "60"})
    svc = ChatService(settings, bus)
    real = await svc.rooms.from_tail(RoomLog(bus, "a"), svc.rooms.horizon())
    pairs, dedup = real.snapshot()
    forged = Room.restored(
        "a",
        4,
        [(msgspec.structs.replace(e, messageId="forged" + e.messageId), s) for e, s in pairs],
        real.last_subject_seq,
        dedup,
    )
    ahead = Room.restored(
        "a",
        4,
        [(msgspec.structs.replace(e, seq=e.seq + 100), s + 10_000) for e, s in pairs],
        real.last_subject_seq + 10_000,
        dedup,
    )
    for data in (b"garbage", encode_room(forged, 1 << 20), encode_room(ahead, 1 << 20)):
        assert data is not None
        await bus.save_snapshot(snapshot_key("a"), data)
        assert await svc.rooms.restore(RoomLog(bus, "a")) is None
        assert picture(await svc.rooms.load("a")) == picture(real)
    # A snapshot store that cannot answer is a cache miss, not a failed load.
    await bus.save_snapshot(snapshot_key("a"), encode_room(real, 1 << 20) or b"")
    assert await svc.rooms.restore(RoomLog(bus, "a")) is not None

    async def unavailable(key: str) -> bytes | None:
        raise Unavailable("the snapshot bucket is electing a leader")

    monkeypatch.setattr(bus, "snapshot", unavailable)
    assert await svc.rooms.restore(RoomLog(bus, "a")) is None
    assert picture(await svc.rooms.load("a")) == picture(real)


async def _presence(bus: Bus, ctx: str, user: str, joined: bool) -> int:
    kind = UserJoined if joined else UserLeft
    ev = kind(contextId=ctx, ts=now_ms(), userId=user, userName=user.upper())
    done = await bus.append(subjects.chat_presence(ctx), encode_event(ev), msg_id=uuid.uuid4().hex)
    return done.seq


@pytest.mark.parametrize("whole", [False, True])
async def test_presence_starts_from_its_snapshot_and_reads_only_what_came_after(
    bus: Bus, whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Presence events never stop growing: a service saves the picture when it stops (and every
    minute), and the next one reads only the events logged after it; a snapshot that cannot be
    read means reading them all, as before: by subject, or (``whole``: they are much of the
    log) in one walk of the whole log."""
    import services.chat.service as chat_module
    from shared import logscan

    monkeypatch.setattr(logscan, "WHOLE", 8 if whole else 0)
    walks: list[int] = []
    real_tail = bus.tail

    def tail(subject: str, start: int, name: str | None = None) -> Any:
        if subject == subjects.EVENTS_ALL:
            walks.append(start)
        return real_tail(subject, start, name)

    monkeypatch.setattr(bus, "tail", tail)

    expected: dict[tuple[str, str], bool] = {}

    async def log_presence(ctx: str, user: str, joined: bool) -> int:
        expected[(ctx, user)] = joined
        return await _presence(bus, ctx, user, joined)

    first_seqs = [await log_presence(f"r{i % 3}", f"u{i}", True) for i in range(30)]
    first_seqs += [await log_presence(f"r{i % 3}", f"u{i}", False) for i in range(0, 30, 2)]
    settings = load_settings({"AG_HEARTBEAT_S": "60"})
    first = ChatService(settings, bus)
    await first.start()
    await first.stop()  # saves the picture
    saved = await bus.snapshot(chat_module.PRESENCE_SNAPSHOT)
    assert saved is not None
    later = [
        await log_presence("r0", "u0", True),
        await log_presence("r1", "u1", False),
        await log_presence("r9", "new", True),
    ]

    # presence entries read at start (the follower tails, it does not read)
    read = count_reads(bus, monkeypatch, lambda subject: subject == subjects.CHAT_PRESENCE_ALL)
    present = sorted((ctx, user) for (ctx, user), joined in expected.items() if joined)
    for snapshot, wanted in ((saved, later), (b"not a snapshot", first_seqs + later)):
        await bus.save_snapshot(chat_module.PRESENCE_SNAPSHOT, snapshot)
        read.clear()
        walks.clear()
        svc = ChatService(settings, bus)
        await svc.start()
        try:
            if whole and snapshot != saved:  # no snapshot: one walk, no read by subject
                assert walks == [1] and read == []
            else:
                assert [seq for _, seqs in read for seq in seqs] == wanted and walks == []
            assert sorted((room, user) for room, user, _, _ in svc.logged.entries()) == present
            assumed = [
                (r, u["userId"]) for r in svc.presence.rooms() for u in svc.presence.users(r)
            ]
            assert sorted(assumed) == present
        finally:
            await svc.stop()
