"""Snapshots for the rooms in the log that have none, made once in the background after start.

A room not in memory loads, and answers history and recovery, from its snapshot in a few
milliseconds. A room without one is read from its subject, which makes nats-server walk the
stream between the room's messages: with 1,000 rooms over 1,000,000 messages, history p99 of
~25-35 ms and a first post of ~0.5 s. Rooms have no snapshot when the log was written before
snapshots existed, when the bucket was lost or deleted (it is a cache of the log), or when a
save failed. So after start the service lists the rooms the log has (``Bus.log_subjects``),
and builds the rooms of its partitions that are not in memory and have no snapshot by reading
the chat log once, in order, as a projection would (one walk of the stream for many rooms,
where reading each room's tail walks it once per room), then saves their snapshots. Memory is
bounded: a pass takes rooms holding at most ``PASS_ENTRIES`` entries between them, and more
rooms take more passes. Requests are answered meanwhile as before.

A snapshot is a verified cache (``ChatRooms.restore`` believes it only where the log agrees),
so one saved here while the room's owner saves its own is harmless: the next load reads on
from whichever is older.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from services.chat.room import Room
from services.chat.room_snapshot import snapshot_key
from services.chat.roomlog import RoomLog
from services.chat.rooms import ChatRooms
from shared import subjects
from shared.bus.port import Bus
from shared.eventlog import decode_logged
from shared.logs import get_logger
from shared.logscan import read_whole, walk
from shared.schemas.events import ChatMessagePosted

__all__ = ["PASS_ENTRIES", "Backfill", "backfill", "passes"]

log = get_logger(__name__)
PASS_ENTRIES = 200_000  # entries of the rooms built in one pass (~100 MB at most in memory)
CHECKS_AT_ONCE = 32  # snapshot lookups in flight
FORGET_FROM = 1_024  # dedup entries a room holds before a walk first drops the stale ones


@dataclass
class Backfill:
    """What one backfill did (for logs and tests)."""

    rooms: int = 0  # rooms in the log
    saved: int = 0  # snapshots made
    passes: int = 0  # walks of the log


def passes(counts: dict[str, int], most: int) -> list[set[str]]:
    """Rooms grouped so that each group holds at most ``most`` entries (a bigger room alone)."""
    groups: list[set[str]] = []
    group: set[str] = set()
    size = 0
    for ctx, n in sorted(counts.items(), key=lambda kv: kv[1]):
        if group and size + n > most:
            groups.append(group)
            group, size = set(), 0
        group.add(ctx)
        size += n
    if group:
        groups.append(group)
    return groups


async def backfill(
    rooms: ChatRooms, owns: Callable[[str], bool], most: int = PASS_ENTRIES
) -> Backfill:
    """Save a snapshot for every room of the log this worker ``owns`` that has none.

    The rooms to do are built by walks of the whole log while they hold enough of it
    (``logscan.read_whole``); a few rooms (rooms that came up since, or that can have no
    snapshot: nothing but undecodable entries) are loaded from their tails one by one instead,
    as a first use would, so they never cost a walk of the whole log on every start."""
    bus = rooms.bus
    out = Backfill()
    counts: dict[str, int] = {}
    for subject, n in (await bus.log_subjects(subjects.CHAT_MESSAGES_ALL)).items():
        try:
            ctx = subjects.chat_room_of(subject)
        except ValueError:  # not a room subject this code writes: nothing to build
            continue
        if ctx is not None:
            counts[ctx] = n
    out.rooms = len(counts)
    todo = await _without_snapshot(rooms, [c for c in counts if owns(c) and not _held(rooms, c)])
    if not todo:
        return out
    keep = rooms.settings.chat_recent_messages
    if not await read_whole(bus, sum(counts[c] for c in todo)):
        for ctx in todo:
            horizon = rooms.horizon()
            room = await rooms.from_tail(RoomLog(bus, ctx), horizon)
            room.forget_before(horizon)  # as a load keeps it
            if not _held(rooms, ctx):
                out.saved += await rooms.save([room])
        return out
    for group in passes({c: counts[c] for c in todo}, most):
        built = await _walk(bus, group, keep, rooms.horizon())
        out.passes += 1
        horizon = rooms.horizon()
        for room in built:
            room.forget_before(horizon)  # as a load keeps it
        # The owner saves the rooms it loaded meanwhile itself, from what it has since.
        out.saved += await rooms.save([r for r in built if not _held(rooms, r.context_id)])
    return out


def _held(rooms: ChatRooms, ctx: str) -> bool:
    return ctx in rooms.rooms or ctx in rooms.evicted


async def _without_snapshot(rooms: ChatRooms, contexts: list[str]) -> list[str]:
    found: list[str] = []
    for i in range(0, len(contexts), CHECKS_AT_ONCE):
        chunk = contexts[i : i + CHECKS_AT_ONCE]
        # The bucket itself, not ChatRooms._snapshot: a store that cannot answer must stop the
        # backfill (Unavailable), not make every room look as if it had no snapshot.
        snaps = await asyncio.gather(*(rooms.bus.snapshot(snapshot_key(c)) for c in chunk))
        found += [c for c, data in zip(chunk, snaps, strict=True) if data is None]
    return found


async def _walk(bus: Bus, group: set[str], keep: int, horizon: int) -> list[Room]:
    """The rooms of ``group`` as the chat log gives them, read once from its start to the
    last entry of any of them (as of now); dedup entries older than ``horizon`` may go."""
    last = await bus.last([subjects.chat_messages(c) for c in group])
    if not last:
        return []
    built = {subjects.chat_messages(c): Room(c, keep) for c in group}  # by subject: no parse
    end = max(e.seq for e in last.values())
    # A room drops dedup entries older than the window as it grows, not only at the end: one
    # room of millions of old messages holds its newest and its window, not all of them.
    forget_at = dict.fromkeys(built.values(), FORGET_FROM)
    # The group's own subjects are the test: exact, cheaper than matching a pattern first.
    messages = walk(bus, end, built.__contains__)
    async with contextlib.aclosing(messages):  # the tail closes at once, however this ends
        async for entries in messages:
            for entry in entries:
                room = built[entry.subject]
                ev = decode_logged(entry.data, entry.seq, entry.subject, "chat")
                if isinstance(ev, ChatMessagePosted):
                    room.apply(ev, entry.seq)
                    if room.dedup_size >= forget_at[room]:  # amortised: at each doubling
                        room.forget_before(horizon)
                        forget_at[room] = max(2 * room.dedup_size, FORGET_FROM)
                else:
                    room.skip(entry.seq)
    return list(built.values())
