"""The chat service: the single writer of every room's ``seq``, history and presence.

Commands (``message`` frames) run through the shared ``CommandWorker`` against ``ChatRooms``,
this service's aggregate: ``decide`` (sans-I/O, ``decide.py``) says what to append and answer,
the worker appends each room's share of a batch atomically with the room's expected last
sequence, then ``commit`` applies the events to the room and ``publish`` broadcasts them. Reads
(``history``, recovery) and presence are request/reply and heartbeats on the bus.

Rooms are projections of their events in the log, rebuilt at start and whenever an append finds
the log ahead of the room (a second writer, a crash between an append and its answer).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import msgspec

from services.chat import metrics
from services.chat.decide import ChatNotes, decide
from services.chat.presence import Change, Presence
from services.chat.room import Room
from shared import subjects, tasks
from shared.bus.port import Bus, Message, Unavailable
from shared.config import Settings
from shared.eventlog import decode_logged
from shared.logs import get_logger
from shared.presence_book import PresenceBook
from shared.ratelimit import KeyedLimiter
from shared.schemas.commands import (
    GatewayHeartbeat,
    HistoryReply,
    HistoryRequest,
    PostMessage,
    PresenceChange,
    PresenceReply,
)
from shared.schemas.events import ChatMessagePosted, UserJoined, UserLeft, encode_event
from shared.schemas.frames import UserData, message_data
from shared.schemas.wire import encode, encode_frame, message_frame
from shared.timefmt import ms_to_ts, now_ms
from shared.worker import CommandWorker, Decision

__all__ = ["ChatRooms", "ChatService"]

log = get_logger(__name__)

_post_decoder = msgspec.json.Decoder(PostMessage)
_history_decoder = msgspec.json.Decoder(HistoryRequest)
_presence_decoder = msgspec.json.Decoder(PresenceChange)
_heartbeat_decoder = msgspec.json.Decoder(GatewayHeartbeat)


class ChatRooms:
    """The chat aggregate as the command worker drives it: one room per context."""

    name = "chat"
    subjects = subjects.CHAT_COMMANDS_ALL
    durable = "chat"

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.rooms: dict[str, Room] = {}  # every room in memory, as the worker last loaded it
        self.limiter = KeyedLimiter(settings.rate_broadcasts_per_minute)

    # --- the worker's side ----------------------------------------------------------------
    def decode(self, data: bytes) -> PostMessage:
        return _post_decoder.decode(data)

    def key(self, cmd: PostMessage) -> str:
        return cmd.contextId

    def deadline(self, cmd: PostMessage) -> int:
        return cmd.deadline

    def reply_to(self, cmd: PostMessage) -> str:
        return subjects.gateway_replies(cmd.origin.gatewayId)

    async def load(self, context_id: str) -> Room:
        """The room rebuilt from its subject in the log (the log is the truth)."""
        room = Room(context_id)
        for entry in await self.bus.read(subjects.chat_messages(context_id)):
            ev = decode_logged(entry.data, entry.seq, entry.subject, "chat")
            if isinstance(ev, ChatMessagePosted):
                room.apply(ev, entry.seq)
            else:
                room.skip(entry.seq)
        room.mark_unsure_since(now_ms() - int(2 * self.settings.dedup_window_s * 1000))
        self.rooms[context_id] = room
        return room

    def decide(self, room: Room, cmds: Sequence[PostMessage], now: int) -> Decision[PostMessage]:
        mono = time.monotonic()
        return decide(room, cmds, now, lambda ctx: self.limiter.hit(ctx, mono))

    def commit(self, room: Room, decision: Decision[PostMessage], first_seq: int) -> None:
        notes: ChatNotes = decision.extra
        for i, ev in enumerate(notes.new):
            room.apply(ev, first_seq + i)

    async def publish(self, room: Room, decision: Decision[PostMessage]) -> None:
        """The live ``message`` frames. Gateways deliver a room's frames in ``seq`` order and fill
        any gap from the log first (``AG-Log-Seq`` says where to read from), so a frame lost here
        (a crash right after the append) is never a hole in what a client sees."""
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

    # --- start-up ---------------------------------------------------------------------------
    async def rebuild_all(self, presence: Presence) -> None:
        """Every room and who was present, from the whole chat part of the log."""
        count = 0
        for entry in await self.bus.read(subjects.CHAT_EVENTS_ALL):
            count += 1
            ev = decode_logged(entry.data, entry.seq, entry.subject, "chat")
            match ev:
                case None:
                    context_id = subjects.chat_room_of(entry.subject)
                    if context_id is not None:
                        self._room(context_id).skip(entry.seq)
                case ChatMessagePosted():
                    self._room(ev.contextId).apply(ev, entry.seq)
                case UserJoined():
                    presence.assume(ev.contextId, ev.userId, ev.userName, True)
                case UserLeft():
                    presence.assume(ev.contextId, ev.userId, ev.userName, False)
        horizon = now_ms() - int(2 * self.settings.dedup_window_s * 1000)
        for room in self.rooms.values():
            room.mark_unsure_since(horizon)
        log.info("chat state rebuilt", extra={"events": count, "rooms": len(self.rooms)})

    def _room(self, context_id: str) -> Room:
        room = self.rooms.get(context_id)
        if room is None:
            room = self.rooms[context_id] = Room(context_id)
        return room


class ChatService:
    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.rooms = ChatRooms(settings, bus)
        self.worker = CommandWorker(bus, self.rooms)
        self.presence = Presence()
        self.book = PresenceBook(settings.heartbeat_s, [(self.presence, self._announce)])
        self._subs: list[object] = []
        self._ticker: asyncio.Task[None] | None = None
        self._started = 0.0

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.rooms.rebuild_all(self.presence)
        self.worker.preload(self.rooms.rooms)
        self._started = time.monotonic()
        bus = self.bus
        self._subs = [
            await bus.subscribe(subjects.RPC_CHAT_HISTORY, self._on_history, queue="chat"),
            await bus.subscribe(subjects.RPC_CHAT_PRESENCE, self._on_presence, queue="chat"),
            await bus.subscribe(subjects.GATEWAY_HEARTBEAT, self._on_heartbeat),
        ]
        self.worker.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name="chat-ticker")
        # A predecessor may have died between an append and its broadcast: gateways check their
        # rooms against the log now, instead of at the room's next message.
        await bus.publish(subjects.CHAT_READY, b"")
        log.info("chat ready", extra={"rooms": len(self.rooms.rooms)})

    async def stop(self) -> None:
        await tasks.stop([self._ticker])
        await self.worker.stop()
        for sub in self._subs:
            await sub.unsubscribe()  # type: ignore[attr-defined]

    # --- history --------------------------------------------------------------------------
    async def _on_history(self, msg: Message) -> None:
        try:
            req = _history_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        room = self.rooms.rooms.get(req.contextId) or Room(req.contextId)
        limit = self.bus.max_payload - 4096  # what one reply may carry, headers aside
        if req.afterSeq is not None:
            events, truncated = room.after(req.afterSeq, req.cap)
            body = encode(HistoryReply([message_data(e) for e in events], lastSeq=room.seq))
            if len(body) > limit or truncated:  # never a partial replay: say truncated
                body = encode(HistoryReply([], truncated=True, lastSeq=room.seq))
        else:
            events, more = room.history(req.limit, req.beforeMs, req.beforeSeq)
            wire = [message_data(e) for e in events]
            body = encode(HistoryReply(wire, hasMore=more, lastSeq=room.seq))
            while len(body) > limit and wire:  # keep the newest that fit; the rest is hasMore
                wire = wire[max(1, len(wire) // 4) :]
                body = encode(HistoryReply(wire, hasMore=True, lastSeq=room.seq))
        await msg.respond(body)

    # --- presence -------------------------------------------------------------------------
    async def _on_presence(self, msg: Message) -> None:
        try:
            change = _presence_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        gw, conn = change.gatewayId, change.conn
        if change.op == "open":
            now = time.monotonic()
            await self.book.change(
                lambda: self.presence.open(gw, conn, now, change.seq), self._announce
            )
        else:
            await self.book.change(
                lambda: self.presence.close(gw, conn.connectionId), self._announce
            )
        if msg.reply:
            users = [UserData(**u) for u in self.presence.users(conn.contextId)]
            await msg.respond(encode(PresenceReply(users)))

    async def _on_heartbeat(self, msg: Message) -> None:
        try:
            hb = _heartbeat_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        now = time.monotonic()
        await self.book.change(
            lambda: self.presence.heartbeat(
                hb.gatewayId, hb.connections, now, final=hb.final, seq=hb.seq
            ),
            self._announce,
        )

    async def _announce(self, ch: Change) -> None:
        """Log a join/leave, then tell the room's other sockets."""
        ts = now_ms()
        cls = UserJoined if ch.kind == "joined" else UserLeft
        ev = cls(contextId=ch.context_id, ts=ts, userId=ch.user_id, userName=ch.user_name)
        try:
            await self.bus.append(
                subjects.chat_presence(ch.context_id), encode_event(ev), msg_id=uuid.uuid4().hex
            )
        except Unavailable as exc:
            log.warning("presence event not logged", extra={"error": str(exc)})
        frame = encode_frame("user_" + ch.kind, ms_to_ts(ts), UserData(ch.user_id, ch.user_name))
        try:
            await self.bus.publish(
                subjects.chat_live(ch.context_id),
                frame,
                {subjects.HDR_EXCEPT_USER: ch.user_id},
            )
        except Unavailable as exc:  # live only: the others see it in their next presence
            log.warning("presence change not broadcast", extra={"error": str(exc)})

    # --- housekeeping ---------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)  # a periodic timer, not synchronisation
            try:
                await self._tick()
            except Exception:  # NATS away, say: try again next beat
                log.exception("chat tick failed")

    async def _tick(self) -> None:
        now = time.monotonic()
        await self.book.tick(now, now - self._started)
        horizon = now_ms() - int(self.settings.dedup_window_s * 1000) * 2
        for room in self.rooms.rooms.values():
            room.forget_before(horizon)
        metrics.ROOMS.set(len(self.rooms.rooms))
        try:
            metrics.CONSUMER_PENDING.set(await self.worker.pending())
        except Exception:  # NATS away: the gauge keeps its last value
            pass
