"""The chat service: consumes chat commands, appends message events, answers history/presence.

It is the single writer of every room's sequence. Each append carries
``Nats-Expected-Last-Subject-Sequence`` (the room's last stream sequence), so a second instance or
a stale view can never give two messages one ``seq``: a mismatch rebuilds the room from the log
and retries. ``Nats-Msg-Id`` is derived from the client frame id, so a command redelivered after a
crash is stored once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import PubAck
from nats.js.errors import APIError

from services.chat import metrics
from services.chat.presence import Change, Presence
from services.chat.room import Room
from shared import subjects
from shared.config import Settings
from shared.eventlog import decode_logged
from shared.logs import get_logger
from shared.natsio import (
    BATCH_DUPLICATE_ID,
    WRONG_LAST_SEQUENCE,
    BatchRefused,
    Conflict,
    DurablePull,
    append_atomic,
    append_one,
    replay,
    stream_seq,
)
from shared.ratelimit import KeyedLimiter
from shared.schemas.commands import (
    CommandResult,
    GatewayHeartbeat,
    HistoryReply,
    HistoryRequest,
    PostMessage,
    PresenceChange,
    PresenceReply,
    command_key,
)
from shared.schemas.events import (
    ChatMessagePosted,
    UserJoined,
    UserLeft,
    encode_event,
)
from shared.schemas.wire import encode, encode_frame, message_frame, message_wire
from shared.timefmt import ms_to_ts, now_ms

__all__ = ["ChatService"]

log = get_logger(__name__)

_post_decoder = msgspec.json.Decoder(PostMessage)
_history_decoder = msgspec.json.Decoder(HistoryRequest)
_presence_decoder = msgspec.json.Decoder(PresenceChange)
_heartbeat_decoder = msgspec.json.Decoder(GatewayHeartbeat)


class ChatService:
    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings = settings
        self.nc = nc
        self.js = nc.jetstream()
        self.rooms: dict[str, Room] = {}
        self.presence = Presence()
        self.limiter = KeyedLimiter(settings.rate_broadcasts_per_minute)
        self._room_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._presence_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[object] = []
        self._started = 0.0

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self._rebuild_all()
        self._started = time.monotonic()
        nc = self.nc
        self._subs = [
            await nc.subscribe(subjects.RPC_CHAT_HISTORY, "chat", cb=self._on_history),
            await nc.subscribe(subjects.RPC_CHAT_PRESENCE, "chat", cb=self._on_presence),
            await nc.subscribe(subjects.GATEWAY_HEARTBEAT, cb=self._on_heartbeat),
        ]
        self._psub = DurablePull.commands(
            self.js, self.settings, subjects.CHAT_COMMANDS_ALL, "chat"
        )
        await self._psub.open()
        self._tasks = [
            asyncio.create_task(self._command_loop(), name="chat-commands"),
            asyncio.create_task(self._ticker(), name="chat-ticker"),
        ]
        # A predecessor may have died between an append and its broadcast: gateways check their
        # rooms against the log now, instead of at the room's next message.
        await nc.publish(subjects.CHAT_READY, b"")
        log.info("chat ready", extra={"rooms": len(self.rooms)})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subs:
            await sub.unsubscribe()  # type: ignore[attr-defined]
        await self._psub.close()

    # --- projection -----------------------------------------------------------------------
    async def _rebuild_all(self) -> None:
        count = 0
        async for msg in replay(self.js, subjects.EVENTS_STREAM, subjects.CHAT_EVENTS_ALL):
            self._apply(msg)
            count += 1
        horizon = now_ms() - int(2 * self.settings.dedup_window_s * 1000)
        for room in self.rooms.values():
            room.mark_unsure_since(horizon)
        log.info("chat state rebuilt", extra={"events": count, "rooms": len(self.rooms)})

    def _apply(self, msg: Msg) -> None:
        ev = decode_logged(msg.data, stream_seq(msg), msg.subject, "chat")
        match ev:
            case None:
                context_id = subjects.chat_room_of(msg.subject)
                if context_id is not None:
                    self._room(context_id).skip(stream_seq(msg))
            case ChatMessagePosted():
                self._room(ev.contextId).apply(ev, stream_seq(msg))
            case UserJoined():
                self.presence.assume(ev.contextId, ev.userId, ev.userName, True)
            case UserLeft():
                self.presence.assume(ev.contextId, ev.userId, ev.userName, False)

    async def _rebuild_room(self, context_id: str) -> Room:
        room = Room(context_id)
        async for msg in replay(
            self.js, subjects.EVENTS_STREAM, subjects.chat_messages(context_id)
        ):
            ev = decode_logged(msg.data, stream_seq(msg), msg.subject, "chat")
            if isinstance(ev, ChatMessagePosted):
                room.apply(ev, stream_seq(msg))
            else:
                room.skip(stream_seq(msg))
        room.mark_unsure_since(now_ms() - int(2 * self.settings.dedup_window_s * 1000))
        self.rooms[context_id] = room
        return room

    def _room(self, context_id: str) -> Room:
        room = self.rooms.get(context_id)
        if room is None:
            room = self.rooms[context_id] = Room(context_id)
        return room

    # --- commands -------------------------------------------------------------------------
    async def _command_loop(self) -> None:
        while True:
            try:
                await self._command_batch()
            except Exception:  # keep consuming: unacked commands are redelivered
                log.exception("command batch failed")
                await asyncio.sleep(0.5)  # back off, then carry on

    async def _command_batch(self) -> None:
        msgs = await self._psub.fetch(256, timeout=1.0)
        by_room: dict[str, list[tuple[Msg, PostMessage]]] = defaultdict(list)
        for msg in msgs:
            try:
                cmd = _post_decoder.decode(msg.data)
            except msgspec.DecodeError:
                log.error("undecodable command dropped")
                await msg.term()
                continue
            by_room[cmd.contextId].append((msg, cmd))
        await asyncio.gather(*(self._run_room(batch) for batch in by_room.values()))

    async def _run_room(self, batch: list[tuple[Msg, PostMessage]]) -> None:
        """One room's share of a fetch: appended as one atomic batch when possible.

        The batch carries the room's expected last sequence on its first event, so it is all
        stored or none; on a conflict (or an id the log already has) the room is rebuilt from
        the log and the remaining commands go one by one.
        """
        ctx = batch[0][1].contextId
        async with self._room_locks[ctx]:
            try:
                left = await self._post_batch(batch)
            except Exception:
                log.exception("batch append failed; going one by one", extra={"contextId": ctx})
                left = batch
            for msg, cmd in left:
                try:
                    await self._post(msg, cmd)
                except Exception:
                    log.exception("command failed; will be redelivered")
                    await msg.nak(delay=1.0)

    async def _post_batch(
        self, batch: list[tuple[Msg, PostMessage]]
    ) -> list[tuple[Msg, PostMessage]]:
        """Answer what needs no append, append the rest atomically; return what is left over."""
        room = self._room(batch[0][1].contextId)
        now, mono = now_ms(), time.monotonic()
        store: list[tuple[Msg, PostMessage, ChatMessagePosted, str]] = []
        keys: set[tuple[str, str]] = set()
        for msg, cmd in batch:
            key = command_key(cmd)
            dup = room.duplicate_of(cmd.origin.userId, cmd.clientId, cmd.requestId)
            if dup is not None:
                await self._rebroadcast_if_unsure(room, dup[1])
                await self._finish(msg, cmd, self._ok(cmd, *dup))
                continue
            if now > cmd.deadline:
                await self._finish(msg, cmd, None, expired=True)
                continue
            if key in keys:
                # the same frame twice in one fetch: the one-by-one path acks the copy
                return [(m, c) for m, c, _, _ in store] + batch[batch.index((msg, cmd)) :]
            if not self.limiter.hit(cmd.contextId, mono):
                await self._finish(msg, cmd, self._rate_limited(cmd))
                continue
            ev = self._event(cmd, room.seq + 1 + len(store))
            store.append((msg, cmd, ev, self._msg_id(cmd)))
            keys.add(key)
        if not store:
            return []
        # Give up before the first gateway does, so `unavailable` stays true (PROTOCOL.md).
        budget = (min(c.deadline for _, c, _, _ in store) - now_ms()) / 1000
        try:
            with metrics.APPEND_LATENCY.time():
                first = await append_atomic(
                    self.nc,
                    subjects.chat_messages(room.context_id),
                    [(mid, encode_event(ev)) for _, _, ev, mid in store],
                    room.last_subject_seq,
                    timeout=max(budget, 0.05),
                )
        except BatchRefused as exc:
            if exc.err_code not in (WRONG_LAST_SEQUENCE, BATCH_DUPLICATE_ID):
                raise
            await self._rebuild_room(room.context_id)
            return [(m, c) for m, c, _, _ in store]
        for i, (msg, cmd, ev, _) in enumerate(store):
            room.apply(ev, first + i)
            await self._broadcast(ev, first + i)
            await self._finish(msg, cmd, self._ok(cmd, ev.messageId, ev.seq))
        return []

    async def _finish(
        self, msg: Msg, cmd: PostMessage, result: CommandResult | None, expired: bool = False
    ) -> None:
        """Send a command's final result (none when expired: the gateway has answered) and ack."""
        if expired:
            # The gateway has already answered `unavailable`; applying it now would make that a lie.
            metrics.COMMANDS.labels("expired").inc()
        elif result is not None:
            metrics.COMMANDS.labels(result.error or "ok").inc()
            reply_to = subjects.gateway_replies(cmd.origin.gatewayId)
            await self.nc.publish(reply_to, encode(result))
        await msg.ack()

    async def _post(self, msg: Msg, cmd: PostMessage) -> None:
        """One command, one append (the careful path; the room lock is held)."""
        result = await self._post_locked(cmd)
        if result is None and now_ms() > cmd.deadline:
            await self._finish(msg, cmd, None, expired=True)
            return
        if result is None:
            metrics.COMMANDS.labels("retried").inc()
            await msg.nak(delay=0.5)
            return
        await self._finish(msg, cmd, result)

    def _event(self, cmd: PostMessage, seq: int) -> ChatMessagePosted:
        return ChatMessagePosted(
            contextId=cmd.contextId,
            ts=now_ms(),
            messageId=uuid.uuid4().hex,
            seq=seq,
            userId=cmd.origin.userId,
            userName=cmd.origin.userName,
            content=cmd.content,
            messageType=cmd.messageType,
            clientId=cmd.clientId,
            requestId=cmd.requestId if cmd.clientId is None else None,
        )

    @staticmethod
    def _msg_id(cmd: PostMessage) -> str:
        """``Nats-Msg-Id``: the same for every delivery of a command and for a re-sent frame id,
        so JetStream stores it once within its duplicate window."""
        # token() keeps the header safe: a client id may hold any character, even CR/LF.
        t = subjects.token
        user, ident = command_key(cmd)
        return f"chat:{t(cmd.contextId)}:{t(user) if user else '~'}:{t(ident)}"

    @staticmethod
    def _rate_limited(cmd: PostMessage) -> CommandResult:
        return CommandResult(
            requestId=cmd.requestId,
            connectionId=cmd.origin.connectionId,
            clientId=cmd.clientId,
            error="rate_limited",
            message="too many messages in this room; try again shortly",
        )

    async def _rebroadcast_if_unsure(self, room: Room, seq: int) -> None:
        if seq in room.unsure:
            room.unsure.discard(seq)
            ev = room.message(seq)
            if ev is not None:
                await self._broadcast(ev, room.log_seq(seq))

    async def _broadcast(self, ev: ChatMessagePosted, log_seq: int | None = None) -> None:
        """The live ``message`` frame. Gateways deliver a room's frames in ``seq`` order and fill
        any gap from the log first (``AG-Log-Seq`` says where to read from), so a frame lost
        here (a crash right after the append) is never a hole in what a client sees."""
        headers = {subjects.HDR_SEQ: str(ev.seq)}
        if log_seq is not None:
            headers[subjects.HDR_LOG_SEQ] = str(log_seq)
        await self.nc.publish(subjects.chat_live(ev.contextId), message_frame(ev), headers=headers)

    async def _post_locked(self, cmd: PostMessage, retry: bool = True) -> CommandResult | None:
        room = self._room(cmd.contextId)
        dup = room.duplicate_of(cmd.origin.userId, cmd.clientId, cmd.requestId)
        if dup is not None:
            await self._rebroadcast_if_unsure(room, dup[1])
            return self._ok(cmd, *dup)
        if now_ms() > cmd.deadline:
            return None
        if retry and not self.limiter.hit(cmd.contextId, time.monotonic()):
            return self._rate_limited(cmd)
        ev = self._event(cmd, room.seq + 1)
        try:
            ack = await self._append(
                subjects.chat_messages(cmd.contextId),
                encode_event(ev),
                self._msg_id(cmd),
                room.last_subject_seq,
                timeout=max((cmd.deadline - now_ms()) / 1000, 0.05),
            )
        except Conflict:
            if not retry:
                return None
            await self._rebuild_room(cmd.contextId)
            return await self._post_locked(cmd, retry=False)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("append failed", extra={"error": repr(exc), "contextId": cmd.contextId})
            return None
        if ack.duplicate:
            # Stored before a crash but unknown to this view: the log is right, re-read it.
            room = await self._rebuild_room(cmd.contextId)
            dup = room.duplicate_of(cmd.origin.userId, cmd.clientId, cmd.requestId)
            if dup is None:
                return None
            await self._rebroadcast_if_unsure(room, dup[1])
            return self._ok(cmd, *dup)
        room.apply(ev, ack.seq)
        await self._broadcast(ev, ack.seq)
        return self._ok(cmd, ev.messageId, ev.seq)

    @staticmethod
    def _ok(cmd: PostMessage, message_id: str, seq: int) -> CommandResult:
        return CommandResult(
            requestId=cmd.requestId,
            connectionId=cmd.origin.connectionId,
            clientId=cmd.clientId,
            ok={"messageId": message_id, "seq": seq},
        )

    async def _append(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        expected: int | None = None,
        timeout: float = 5.0,
    ) -> PubAck:
        with metrics.APPEND_LATENCY.time():
            return await append_one(self.js, subject, payload, msg_id, expected, timeout)

    # --- history --------------------------------------------------------------------------
    async def _on_history(self, msg: Msg) -> None:
        try:
            req = _history_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        room = self.rooms.get(req.contextId) or Room(req.contextId)
        limit = self.nc.max_payload - 4096  # what one NATS reply may carry, headers aside
        if req.afterSeq is not None:
            events, truncated = room.after(req.afterSeq, req.cap)
            body = encode(HistoryReply([message_wire(e) for e in events], lastSeq=room.seq))
            if len(body) > limit or truncated:  # never a partial replay: say truncated
                body = encode(HistoryReply([], truncated=True, lastSeq=room.seq))
        else:
            events, more = room.history(req.limit, req.beforeMs, req.beforeSeq)
            wire = [message_wire(e) for e in events]
            body = encode(HistoryReply(wire, hasMore=more, lastSeq=room.seq))
            while len(body) > limit and wire:  # keep the newest that fit; the rest is hasMore
                wire = wire[max(1, len(wire) // 4) :]
                body = encode(HistoryReply(wire, hasMore=True, lastSeq=room.seq))
        await msg.respond(body)

    # --- presence -------------------------------------------------------------------------
    async def _on_presence(self, msg: Msg) -> None:
        try:
            change = _presence_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        async with self._presence_lock:
            if change.op == "open":
                ch = self.presence.open(change.gatewayId, change.conn, time.monotonic(), change.seq)
            else:
                ch = self.presence.close(change.gatewayId, change.conn.connectionId)
            if ch is not None:
                await self._announce(ch)
        if msg.reply:
            await msg.respond(encode(PresenceReply(self.presence.users(change.conn.contextId))))

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = _heartbeat_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        async with self._presence_lock:
            changes = self.presence.heartbeat(
                hb.gatewayId, hb.connections, time.monotonic(), final=hb.final, seq=hb.seq
            )
            for ch in changes:
                await self._announce(ch)

    async def _announce(self, ch: Change) -> None:
        """Log a join/leave, then tell the room's other sockets."""
        ts = now_ms()
        cls = UserJoined if ch.kind == "joined" else UserLeft
        ev = cls(contextId=ch.context_id, ts=ts, userId=ch.user_id, userName=ch.user_name)
        try:
            await self._append(
                subjects.chat_presence(ch.context_id), encode_event(ev), uuid.uuid4().hex
            )
        except (TimeoutError, nats.errors.Error, APIError) as exc:
            log.warning("presence event not logged", extra={"error": repr(exc)})
        frame = encode_frame(
            "user_" + ch.kind, ms_to_ts(ts), {"userId": ch.user_id, "username": ch.user_name}
        )
        await self.nc.publish(
            subjects.chat_live(ch.context_id), frame, headers={subjects.HDR_EXCEPT_USER: ch.user_id}
        )

    async def _ticker(self) -> None:
        beat = self.settings.heartbeat_s
        settled = False
        while True:
            await asyncio.sleep(beat)  # a periodic timer, not synchronisation
            try:
                settled = await self._tick(beat, settled)
            except Exception:  # NATS away, say: try again next beat
                log.exception("chat tick failed")

    async def _tick(self, beat: float, settled: bool) -> bool:
        now = time.monotonic()
        async with self._presence_lock:
            changes = self.presence.expire(now, 3 * beat)
            if not settled and now - self._started > 2.5 * beat:
                changes += self.presence.settle()
                settled = True
            for ch in changes:
                await self._announce(ch)
        horizon = now_ms() - int(self.settings.dedup_window_s * 1000) * 2
        for room in self.rooms.values():
            room.forget_before(horizon)
        metrics.ROOMS.set(len(self.rooms))
        try:
            metrics.CONSUMER_PENDING.set(await self._psub.pending())
        except Exception:  # NATS away: the gauge keeps its last value
            pass
        return settled
