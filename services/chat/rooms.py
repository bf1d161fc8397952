"""The chat aggregate as the command worker drives it: one room per context, loaded on first
use and kept in memory up to ``AG_CHAT_CACHE_ROOMS`` (least recently used leave first).

A room loads from its snapshot (``room_snapshot``) when the log agrees with it, else from the
tail of its subject (``roomlog``); it is saved as a snapshot when it leaves memory, every minute
it changed (the service's saver calls ``save_due``) and at stop.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import msgspec

from services.chat.decide import ChatNotes, decide
from services.chat.room import Room
from services.chat.room_snapshot import decode_room, encode_room, snapshot_key
from services.chat.roomlog import RoomLog
from shared import subjects
from shared.bus.port import Bus, Unavailable
from shared.config import Settings
from shared.eventlog import decode_logged
from shared.logs import get_logger
from shared.partitions import chat_partition
from shared.ratelimit import KeyedLimiter
from shared.schemas.commands import PostMessage
from shared.schemas.events import ChatMessagePosted
from shared.schemas.wire import message_frame
from shared.timefmt import now_ms
from shared.worker import Decision

__all__ = ["CATCH_UP", "ChatRooms"]

log = get_logger(__name__)
CATCH_UP = 64  # entries a read brings a room's snapshot up to date by
SAVE_CONCURRENCY = 32  # room snapshots saved at once

_post_decoder = msgspec.json.Decoder(PostMessage)


class ChatRooms:
    """The chat aggregate as the command worker drives it: one room per context."""

    name = "chat"
    subjects = subjects.CHAT_COMMANDS_ALL
    durable = "chat"

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        # The rooms in memory as the worker last loaded them, least recently used first.
        self.rooms: OrderedDict[str, Room] = OrderedDict()
        self.limiter = KeyedLimiter(settings.rate_broadcasts_per_minute)
        self.evict: Callable[[str], bool] = lambda _: True  # the worker's, once it exists
        # Rooms that left memory with an unsaved snapshot (at most as many as stay in memory).
        self.evicted: dict[str, Room] = {}
        self.cap = settings.chat_cache_rooms

    # --- the worker's side ----------------------------------------------------------------
    def decode(self, data: bytes) -> PostMessage:
        return _post_decoder.decode(data)

    def key(self, cmd: PostMessage) -> str:
        return cmd.contextId

    def deadline(self, cmd: PostMessage) -> int:
        return cmd.deadline

    def reply_to(self, cmd: PostMessage) -> str:
        return subjects.gateway_replies(cmd.origin.gatewayId)

    def partition_subjects(self, partition: int) -> str:
        return subjects.chat_commands_partition(partition)

    def partition(self, context_id: str) -> int:
        return chat_partition(context_id, self.settings.partitions)

    def forget_partition(self, partition: int) -> None:
        """Rooms of a partition that changed hands: another worker may have written to them."""
        for context_id in [c for c in self.rooms if self.partition(c) == partition]:
            del self.rooms[context_id]
        for context_id in [c for c in self.evicted if self.partition(c) == partition]:
            del self.evicted[context_id]

    async def load(self, context_id: str) -> Room:
        """The room from its snapshot and the log after it, else from the tail of its subject:
        its newest messages and the dedup window."""
        log = RoomLog(self.bus, context_id)
        horizon = self.horizon()
        room = await self.restore(log)
        if room is None:
            room = await self.from_tail(log, horizon)
        room.forget_before(horizon)
        room.mark_unsure_since(horizon)
        self.rooms[context_id] = room
        self.rooms.move_to_end(context_id)
        self.bound()
        return room

    async def restore(self, room_log: RoomLog) -> Room | None:
        """The room from its snapshot, brought up to the log's end; None when there is no
        snapshot the log agrees with, or the log has moved on too far since (read the tail)."""
        data, (last, newest) = await asyncio.gather(
            self._snapshot(room_log.context_id), room_log.last_hit()
        )
        if data is None or last is None:
            return None
        try:
            room = decode_room(data, room_log.context_id, self.settings.chat_recent_messages)
        except ValueError as exc:
            log.warning("room snapshot not used", extra={"error": str(exc)})
            return None
        room.saved = room.last_subject_seq
        newest_msg, newest_at = room.messages[-1], room.log_seq(room.seq)
        assert newest_at is not None  # a restored room has messages
        if newest is not None and newest.entry.seq == newest_at:
            # Nothing since: the log's last message is the snapshot's (the same id there).
            return room if newest.event.messageId == newest_msg.messageId else None
        if newest_at > last.seq:
            return None  # a picture from past the log's end: not this log's
        # Read on from the snapshot's newest message, which must come first (the log agrees).
        start, budget = newest_at, 2 * self.settings.chat_recent_messages
        first = True
        while start <= last.seq:
            entries = await self.bus.read(room_log.subject, start, CATCH_UP)
            if not entries:
                return None  # the log ends before the snapshot: not this log's picture
            for entry in entries:
                ev = decode_logged(entry.data, entry.seq, entry.subject, "chat")
                if first:
                    if entry.seq != newest_at or not (
                        isinstance(ev, ChatMessagePosted) and ev.messageId == newest_msg.messageId
                    ):
                        return None
                    first = False
                elif isinstance(ev, ChatMessagePosted):
                    if ev.seq != room.seq + 1:
                        return None
                    room.apply(ev, entry.seq)
                else:
                    room.skip(entry.seq)
            start = entries[-1].seq + 1
            budget -= len(entries)
            if budget <= 0 and start <= last.seq:
                return None  # far behind: reading the tail costs less
        return room

    async def _snapshot(self, context_id: str) -> bytes | None:
        try:
            return await self.bus.snapshot(snapshot_key(context_id))
        except Unavailable as exc:  # a cache: the room is read from the log instead
            log.warning("room snapshot not read", extra={"error": str(exc)})
            return None

    def horizon(self) -> int:
        """Dedup entries older than this (epoch ms) are forgotten: twice the window, kept at
        least as long as promised."""
        return now_ms() - int(2 * self.settings.dedup_window_s * 1000)

    async def from_tail(self, log: RoomLog, horizon: int) -> Room:
        """The newest messages, and back to ``horizon`` (the dedup window), from the log."""
        keep = self.settings.chat_recent_messages
        room = Room(log.context_id, keep)
        last, newest = await log.last_hit()
        if last is not None and newest is None:
            # The last entry is not a message: read the whole subject (rare, and correct).
            for entry in await self.bus.read(log.subject):
                msg = decode_logged(entry.data, entry.seq, entry.subject, "chat")
                if isinstance(msg, ChatMessagePosted):
                    room.apply(msg, entry.seq)
                else:
                    room.skip(entry.seq)
        elif newest is not None:
            # The newest `keep` messages, then further back until the dedup window is in.
            n = newest.event.seq
            hits = await log.from_seq(max(n - keep + 1, 1), n)
            span = keep
            while hits and hits[0].event.seq > 1 and hits[0].event.ts >= horizon:
                span *= 2
                older = await log.from_seq(max(hits[0].event.seq - span, 1), span)
                older = [h for h in older if h.event.seq < hits[0].event.seq]
                if not older:
                    break
                hits = older + hits
            for hit in hits:
                room.apply(hit.event, hit.entry.seq)
        return room

    def bound(self) -> None:
        """Drop the least recently used rooms the worker is not using, down to the cap."""
        over = len(self.rooms) - self.cap
        if over <= 0:
            return  # the common case, once per batch: nothing to look at
        for context_id in list(self.rooms):
            if over <= 0:
                return
            if self.evict(context_id):
                room = self.rooms.pop(context_id)
                if room.last_subject_seq != room.saved and len(self.evicted) < self.cap:
                    self.evicted[context_id] = room  # saved soon: the next load is cheap
                over -= 1

    async def save_due(self, in_memory: bool, owns: Callable[[str], bool]) -> int:
        """Save the rooms that left memory unsaved, and with ``in_memory`` the changed rooms
        in memory of the partitions this worker ``owns``; how many were saved."""
        rooms = list(self.evicted.values())
        self.evicted.clear()
        if in_memory:
            rooms += [r for c, r in self.rooms.items() if owns(c)]
        return await self.save(rooms)

    async def save(self, rooms: list[Room]) -> int:
        """Save the snapshots of ``rooms`` that changed since their last one; how many."""
        limit = self.bus.max_payload - 4096
        saved = 0

        async def one(room: Room) -> None:
            nonlocal saved
            up_to = room.last_subject_seq
            if up_to == room.saved:
                return
            data = encode_room(room, limit)  # now: the room may change while this waits
            if data is None:
                return
            await self.bus.save_snapshot(snapshot_key(room.context_id), data)
            room.saved = max(room.saved, up_to)
            saved += 1

        failed: list[BaseException] = []
        for i in range(0, len(rooms), SAVE_CONCURRENCY):
            done = await asyncio.gather(
                *(one(r) for r in rooms[i : i + SAVE_CONCURRENCY]), return_exceptions=True
            )
            failed += [e for e in done if isinstance(e, BaseException)]
        if failed:  # each room that failed is saved again later, or read from the log
            log.warning(
                "room snapshots not saved", extra={"rooms": len(failed), "error": repr(failed[0])}
            )
        return saved

    def decide(self, room: Room, cmds: Sequence[PostMessage], now: int) -> Decision[PostMessage]:
        if room.context_id in self.rooms:
            self.rooms.move_to_end(room.context_id)  # recently used: the last to leave memory
        mono = time.monotonic()
        return decide(room, cmds, now, lambda ctx: self.limiter.hit(ctx, mono))

    def commit(self, room: Room, decision: Decision[PostMessage], seqs: Sequence[int]) -> None:
        notes: ChatNotes = decision.extra
        for ev, seq in zip(notes.new, seqs, strict=True):
            room.apply(ev, seq)

    async def publish(self, room: Room, decision: Decision[PostMessage]) -> None:
        """The live ``message`` frames. Gateways deliver a room's frames in ``seq`` order and fill
        any gap from the log first (``AG-Log-Seq`` says where to read from), so a frame lost here
        (a crash right after the append) is never a hole in what a client sees."""
        self.bound()  # rooms that were busy when the last one loaded may be idle now
        notes: ChatNotes = decision.extra
        for seq in notes.again:
            room.unsure.discard(seq)
        for seq in [*notes.again, *(ev.seq for ev in notes.new)]:
            ev = room.message(seq)
            if ev is None:
                continue
            headers = {subjects.HDR_SEQ: str(ev.seq)}
            log_seq = room.log_seq(seq)
            if log_seq is not None:
                headers[subjects.HDR_LOG_SEQ] = str(log_seq)
            await self.bus.publish(subjects.chat_live(ev.contextId), message_frame(ev), headers)
