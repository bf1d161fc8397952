"""Snapshots for the rooms in the log that have none, made once in the background after start.

A room not in memory loads, and answers history and recovery, from its snapshot in a few
milliseconds. A room without one is read from its subject, which makes nats-server walk the
stream between the room's messages: with 1,000 rooms over 1,000,000 messages, history p99 of
~25-35 ms and a first post of ~0.5 s. Rooms have no snapshot when the log was written before
snapshots existed, when the bucket was lost or deleted (it is a cache of the log), or when a
save failed. So after start the service lists the rooms the log has, and for each room of its
partitions that is not in memory and has no snapshot, loads it from its tail as a first use
would and saves its snapshot, ``AG_CHAT_SNAPSHOT_BACKFILL`` rooms at a time. Requests are
answered meanwhile as before (from the log until a room's snapshot is there).

A snapshot is a verified cache (``ChatRooms.restore`` believes it only where the log agrees),
so one saved here while the room's owner saves its own is harmless: the next load reads on
from whichever is older.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from services.chat.roomlog import RoomLog
from services.chat.rooms import ChatRooms
from shared import subjects
from shared.bus.port import Unavailable
from shared.logs import get_logger

__all__ = ["Backfill", "backfill"]

log = get_logger(__name__)


@dataclass
class Backfill:
    """What one pass did (for logs and tests)."""

    rooms: int = 0  # rooms in the log
    saved: int = 0  # snapshots made
    skipped: int = 0  # in memory, another worker's, or with a snapshot already
    failed: int = 0  # not read or not saved (a later load reads the log, as before)


async def backfill(rooms: ChatRooms, owns: Callable[[str], bool], concurrency: int) -> Backfill:
    """Save a snapshot for every room of the log this worker ``owns`` that has none."""
    out = Backfill()
    contexts = [
        ctx
        for ctx in map(
            subjects.chat_room_of, await rooms.bus.log_subjects(subjects.CHAT_MESSAGES_ALL)
        )
        if ctx is not None
    ]
    out.rooms = len(contexts)
    queue = iter(contexts)

    async def one(ctx: str) -> None:
        if ctx in rooms.rooms or ctx in rooms.evicted or not owns(ctx):
            out.skipped += 1  # the owner saves a room in memory itself
            return
        if await rooms.snapshot_of(ctx) is not None:
            out.skipped += 1
            return
        horizon = rooms.horizon()
        room = await rooms.from_tail(RoomLog(rooms.bus, ctx), horizon)
        room.forget_before(horizon)  # as a load keeps it
        if await rooms.save([room]):
            out.saved += 1
        else:  # nothing to picture (no message on the subject), or the save failed (logged)
            out.skipped += 1

    async def drain() -> None:
        for ctx in queue:  # one iterator shared by the tasks: each room is taken once
            try:
                await one(ctx)
            except Unavailable as exc:
                out.failed += 1
                log.warning("room snapshot not made", extra={"contextId": ctx, "error": str(exc)})

    await asyncio.gather(*(drain() for _ in range(max(concurrency, 1))))
    return out
