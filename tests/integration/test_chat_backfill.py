"""Rooms of the log with no snapshot get one after start (``services/chat/backfill.py``): the
room its tail gives, built by walks of the log or loads of their tails, for the partitions a
worker holds at start and those it gains later; on the in-memory bus and a real nats-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from services.chat.room import Room
from services.chat.roomlog import RoomLog
from services.chat.service import ChatService
from shared import subjects
from shared.bus.memory import MemoryBus
from shared.bus.port import Bus
from shared.config import load_settings
from shared.schemas.commands import HistoryRequest
from shared.timefmt import now_ms
from tests.conftest import T
from tests.integration.test_chat_log import ROOMS, N, count_reads, fill


def same_room(a: Room, b: Room) -> bool:
    """The same room as far as a load can tell: seq, the subject's last sequence, the dedup
    entries and the newest messages at their stream sequences (how many more of the older
    ones a room still holds depends on how it was built)."""
    (pa, da), (pb, db) = a.snapshot(), b.snapshot()
    n = min(len(pa), len(pb), a.keep or len(pa))
    return (a.seq, a.last_subject_seq, sorted(da), pa[-n:]) == (
        b.seq,
        b.last_subject_seq,
        sorted(db),
        pb[-n:],
    )


async def test_rooms_of_the_log_without_a_snapshot_get_one_after_start(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log written before snapshots existed (or whose bucket was lost): after start the
    service builds each room that has no snapshot from one walk of the log, the room its tail
    gives, and leaves the others alone; a room not in memory then answers history reading none
    of its messages."""
    from services.chat.room_snapshot import decode_room, encode_room, snapshot_key

    t0 = now_ms() - 1000 * (N + 30)  # every message in the dedup window
    ref = await fill(bus, t0)
    settings = load_settings({"AG_CHAT_RECENT_MESSAGES": "4", "AG_HEARTBEAT_S": "60"})
    svc = ChatService(settings, bus)
    tails = {
        ctx: await svc.rooms.from_tail(RoomLog(bus, ctx), svc.rooms.horizon()) for ctx in ROOMS
    }
    kept = encode_room(tails["a"], 1 << 20)
    assert kept is not None
    await bus.save_snapshot(snapshot_key("a"), kept)  # "a" has one already
    assert [await bus.snapshot(snapshot_key(ctx)) for ctx in ROOMS[1:]] == [None] * 3
    await svc.start()
    try:
        assert svc.backfilled is not None
        done = await asyncio.wait_for(svc.backfilled, T(20))
        assert done is not None and (done.rooms, done.saved, done.passes) == (4, 3, 1)
        assert await bus.snapshot(snapshot_key("a")) == kept
        for ctx in ROOMS[1:]:
            data = await bus.snapshot(snapshot_key(ctx))
            assert data is not None
            assert same_room(decode_room(data, ctx, 4), tails[ctx])
        reads = count_reads(bus, monkeypatch)
        for ctx in ROOMS:
            got = json.loads(await svc._history(HistoryRequest(ctx, limit=4)))
            want, more = ref[ctx].history(4)
            assert [m["seq"] for m in got["messages"]] == [m.seq for m in want]
        assert not reads  # every room answered from its snapshot
    finally:
        await svc.stop()
    # Off: nothing is listed or saved.
    off = ChatService(
        load_settings({"AG_CHAT_SNAPSHOT_BACKFILL": "false", "AG_HEARTBEAT_S": "60"}), bus
    )
    await off.start()
    try:
        assert off.backfilled is None
    finally:
        await off.stop()


@pytest.mark.parametrize("whole", [True, False])
async def test_a_backfill_in_passes_builds_the_same_rooms(
    bus: Bus, whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rooms that hold more entries together than one pass takes are built over several walks
    of the whole log, or (``whole`` False: too small a part of it) loaded from their tails one
    by one, each the room its tail gives; rooms in memory or of another worker's partitions
    are left to their owner."""
    from services.chat.backfill import backfill
    from services.chat.room_snapshot import decode_room, snapshot_key
    from shared import logscan

    monkeypatch.setattr(logscan, "WHOLE", 8 if whole else 0)
    tails: list[str] = []
    real_tail = bus.tail

    def tail(subject: str, start: int, name: str | None = None) -> Any:
        tails.append(subject)
        return real_tail(subject, start, name)

    monkeypatch.setattr(bus, "tail", tail)

    await fill(bus, now_ms() - 1000 * (N + 30))
    settings = load_settings({"AG_CHAT_RECENT_MESSAGES": "4", "AG_HEARTBEAT_S": "60"})
    svc = ChatService(settings, bus)
    await svc.rooms.load("c")  # in memory: its owner saves it
    done = await backfill(svc.rooms, lambda ctx: ctx != "d", most=45)
    # a and b: ~40 entries each, so two passes when walked
    assert (done.rooms, done.saved, done.passes) == (4, 2, 2 if whole else 0)
    assert tails == ([subjects.EVENTS_ALL] * 2 if whole else [])
    for ctx in ("a", "b"):
        data = await bus.snapshot(snapshot_key(ctx))
        assert data is not None
        tail = await svc.rooms.from_tail(RoomLog(bus, ctx), svc.rooms.horizon())
        assert same_room(decode_room(data, ctx, 4), tail)
    assert [await bus.snapshot(snapshot_key(ctx)) for ctx in ("c", "d")] == [None, None]


async def test_rooms_of_partitions_gained_after_start_are_backfilled_then() -> None:
    """A restart whose predecessor's leases have not lapsed yet owns nothing at start; the
    partitions it gains a lease later get their rooms' snapshots then."""
    from services.chat.room_snapshot import snapshot_key

    bus = MemoryBus(lease_s=1.0)
    await fill(bus, now_ms() - 1000 * (N + 30))
    settings = load_settings({"AG_HEARTBEAT_S": "60", "AG_LEASE_S": "1"})
    leases = bus.leases()
    for p in range(settings.partitions):  # a crashed predecessor's leases, still live
        assert await leases.claim(f"chat.p.{p}", "predecessor") is not None
    wanted = {snapshot_key(ctx) for ctx in ROOMS}
    saved: set[str] = set()
    all_saved = asyncio.Event()
    real_save = bus.save_snapshot

    async def save_snapshot(key: str, data: bytes) -> None:
        await real_save(key, data)
        saved.add(key)
        if wanted <= saved:
            all_saved.set()

    bus.save_snapshot = save_snapshot  # type: ignore[method-assign]
    svc = ChatService(settings, bus)
    await svc.start()
    try:
        assert svc.backfilled is None and not any(svc.owns(ctx) for ctx in ROOMS)
        await asyncio.wait_for(all_saved.wait(), T(15))  # once the leases lapse
        assert all(svc.owns(ctx) for ctx in ROOMS)
        assert all([await bus.snapshot(snapshot_key(ctx)) is not None for ctx in ROOMS])
    finally:
        await svc.stop()
    await bus.close()
