"""The chat service: the single writer of every room's ``seq``, history and presence.

Commands (``message`` frames) run through the shared ``CommandWorker`` against ``ChatRooms``
(``rooms.py``), this service's aggregate: ``decide`` (sans-I/O, ``decide.py``) says what to
append and answer, the worker appends each room's share of a batch atomically with the room's
expected last sequence, then ``commit`` applies the events to the room and ``publish``
broadcasts them. Reads (``history``, recovery) and presence are request/reply and heartbeats
on the bus.

Rooms are projections of the tail of their subject in the log, loaded on first use and again
whenever an append finds the log ahead of the room (a second writer, a crash between an append
and its answer). The log is the database: a room in memory keeps its seq, its newest messages
and the dedup window; history and recovery past those read the room's subject (``roomlog``);
at most ``AG_CHAT_CACHE_ROOMS`` rooms stay in memory. A room's picture is saved as a snapshot
(``room_snapshot``) when it leaves memory, every minute it changed, and at stop, so loading it
again is two reads, not a search of the stream; rooms of the log that have none get one in the
background after start (``backfill``). Start-up reads presence only, so it takes the same time
however many messages the log holds.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import msgspec

from services.chat import metrics
from services.chat.backfill import Backfill, backfill
from services.chat.presence import Change, Presence
from services.chat.room import NotKept, Room
from services.chat.roomlog import RoomLog
from services.chat.rooms import ChatRooms
from shared import subjects, tasks
from shared.bus.pipe import AppendPipe
from shared.bus.port import Bus, Message, Unavailable
from shared.config import Settings
from shared.follow import SNAPSHOT_S, LogFollower, replay_presence
from shared.logs import get_logger
from shared.ownership import run_partitions
from shared.presence import LoggedPresence
from shared.presence_book import PresenceBook
from shared.presence_snapshot import Row
from shared.schemas.commands import (
    GatewayHeartbeat,
    HistoryReply,
    HistoryRequest,
    PresenceChange,
    PresenceReply,
)
from shared.schemas.events import UserJoined, UserLeft, encode_event
from shared.schemas.frames import UserData, message_data
from shared.schemas.wire import encode, encode_frame
from shared.timefmt import ms_to_ts, now_ms
from shared.worker import CommandWorker

__all__ = ["ChatService"]

log = get_logger(__name__)
PRESENCE_SNAPSHOT = "chat.presence"  # the snapshot key (shared/presence_snapshot.py)
PRESENCE_FILTERS = [subjects.CHAT_PRESENCE_ALL]
STOP_SAVE_S = 5.0  # at most this long saving room snapshots when stopping

_history_decoder = msgspec.json.Decoder(HistoryRequest)
_presence_decoder = msgspec.json.Decoder(PresenceChange)
_heartbeat_decoder = msgspec.json.Decoder(GatewayHeartbeat)


class ChatService:
    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.rooms = ChatRooms(settings, bus)
        self.worker = CommandWorker(bus, self.rooms)
        self.rooms.evict = self.worker.evict
        self.ownership = run_partitions(settings, bus, self.worker, "chat", self._partition_moved)
        self.presence = Presence()
        self.book = PresenceBook(settings.heartbeat_s, [(self.presence, self._announce)])
        self.presence_log = AppendPipe(bus, "presence")
        # What the log says about presence, followed live: a partition taken over is reconciled
        # with it (changes while the partition had no owner were announced by nobody).
        self.logged = LoggedPresence[str, None]()
        self.follow = LogFollower(
            bus,
            PRESENCE_FILTERS,
            self._logged,
            "chat",
            snapshot=(PRESENCE_SNAPSHOT, lambda: {"rooms": self.logged}),
        )
        self._subs: list[object] = []
        self._ticker: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        # Snapshots for the rooms of the log that have none (``backfill``), for the partitions
        # gained since the last run (all of them at start); the running or last run.
        self.backfilled: asyncio.Task[Backfill | None] | None = None
        self._backfill_due: set[int] = set()
        self._backfill_open = False  # set once the first ownership round is done
        self._background: set[asyncio.Task[None]] = set()
        self._started = 0.0

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        last = await replay_presence(
            self.bus, PRESENCE_SNAPSHOT, PRESENCE_FILTERS, "chat", self._restore, self._replayed
        )
        self.follow.start(last)
        self._started = time.monotonic()
        bus = self.bus
        # Every worker follows every presence change and heartbeat (a partition's next owner
        # knows who is there); the room's owner alone logs, broadcasts and answers.
        self._subs = [
            await bus.subscribe(subjects.RPC_CHAT_HISTORY, self._on_history, queue="chat"),
            await bus.subscribe(subjects.RPC_CHAT_PRESENCE, self._on_presence),
            await bus.subscribe(subjects.GATEWAY_HEARTBEAT, self._on_heartbeat),
        ]
        await self.ownership.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name="chat-ticker")
        self._saver = asyncio.create_task(self._save_loop(), name="chat-room-snapshots")
        self._backfill_open = True  # every partition of the first round in one run
        self._want_backfill()
        # A predecessor may have died between an append and its broadcast: gateways check their
        # rooms against the log now, instead of at the room's next message.
        await bus.publish(subjects.CHAT_READY, b"")
        log.info("chat ready")

    async def stop(self) -> None:
        await tasks.stop([self._ticker, self._saver, self.backfilled])
        try:  # while the partitions are still this worker's (giving them up forgets the rooms)
            await asyncio.wait_for(self._save_rooms(in_memory=True), STOP_SAVE_S)
        except Exception as exc:  # NATS gone too, or slow: the next loads read the log
            log.warning("room snapshots not saved at stop", extra={"error": repr(exc)})
        await self.ownership.stop()
        await self.worker.stop()
        await tasks.stop(list(self._background))
        await self.follow.stop()
        for sub in self._subs:
            await sub.unsubscribe()  # type: ignore[attr-defined]
        await self.presence_log.stop()

    def owns(self, context_id: str) -> bool:
        return self.ownership.owns(self.rooms.partition(context_id))

    async def _partition_moved(self, partition: int, gained: bool) -> None:
        if gained:  # its rooms may have no snapshot (a predecessor that never saved them)
            self._want_backfill(partition)
        else:
            self._backfill_due.discard(partition)
        self.rooms.forget_partition(partition)
        if gained:
            # The last owner may have died between an append and its broadcast: gateways
            # check their rooms against the log now, instead of at the room's next message.
            await self.bus.publish(subjects.CHAT_READY, b"")
            self._spawn(self._reconcile(partition), f"chat-reconcile-{partition}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _restore(self, pictures: dict[str, list[Row]]) -> None:
        """Start-up: who the last presence snapshot says was present."""
        for room, user, name, _ in pictures.get("rooms", []):
            assert isinstance(room, str)
            self.presence.assume(room, user, name, True)
            self.logged.apply(room, user, name, None, True)

    def _replayed(self, ev: object) -> None:
        """Start-up: a presence event after the snapshot (counts until the grace ends)."""
        if isinstance(ev, UserJoined | UserLeft):
            self.presence.assume(ev.contextId, ev.userId, ev.userName, isinstance(ev, UserJoined))
        self._logged(ev)

    def _logged(self, ev: object) -> None:
        match ev:
            case UserJoined():
                self.logged.apply(ev.contextId, ev.userId, ev.userName, None, True)
            case UserLeft():
                self.logged.apply(ev.contextId, ev.userId, ev.userName, None, False)

    async def _reconcile(self, partition: int) -> None:
        """Announce what changed in a partition's rooms while nobody owned it: who is there
        now against what the log says (once it has read the log's presence events so far)."""
        await self.follow.caught_up(self.settings.lease_s)
        rooms = {*self.presence.rooms(), *self.logged.rooms()}

        def changes() -> list[Change]:
            out: list[Change] = []
            for ctx in sorted(r for r in rooms if self.rooms.partition(r) == partition):
                out += self.presence.reconcile(self.logged, ctx)
            return out

        await self.book.change(changes, self._announce)

    # --- history --------------------------------------------------------------------------
    async def _on_history(self, msg: Message) -> None:
        try:
            req = _history_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        try:
            body = await self._history(req)
        except Unavailable as exc:
            log.warning("history not read", extra={"error": str(exc)})
            return  # the gateway answers `unavailable`
        await msg.respond(body)

    async def _history(self, req: HistoryRequest) -> bytes:
        """From the room in memory when it has the messages, else from the room's subject."""
        # Only a room this worker writes is sure to be current in memory.
        room = self.rooms.rooms.get(req.contextId) if self.owns(req.contextId) else None
        log = RoomLog(self.bus, req.contextId)
        if room is None:
            room = await self.rooms.restore(log)  # from its snapshot, for this read only
        if room is not None:
            last = room.seq
        else:
            entry, hit = await log.last_hit()
            last = hit.event.seq if hit is not None else 0
            if entry is not None and hit is None:
                room = await self._load(req.contextId)  # not a message last: read it all
                last = room.seq
        limit = self.bus.max_payload - 4096  # what one reply may carry, headers aside
        if req.afterSeq is not None:
            try:
                if room is None:
                    raise NotKept
                got = room.after(req.afterSeq, req.cap)
            except NotKept:
                got = await log.after(last, req.afterSeq, req.cap)
            events, truncated = got
            body = encode(HistoryReply([message_data(e) for e in events], lastSeq=last))
            if len(body) > limit or truncated:  # never a partial replay: say truncated
                body = encode(HistoryReply([], truncated=True, lastSeq=last))
            return body
        try:
            if room is None:
                raise NotKept
            page = room.history(req.limit, req.beforeMs, req.beforeSeq)
        except NotKept:
            page = await log.history(last, req.limit, req.beforeMs, req.beforeSeq)
        events, more = page
        wire = [message_data(e) for e in events]
        body = encode(HistoryReply(wire, hasMore=more, lastSeq=last))
        while len(body) > limit and wire:  # keep the newest that fit; the rest is hasMore
            wire = wire[max(1, len(wire) // 4) :]
            body = encode(HistoryReply(wire, hasMore=True, lastSeq=last))
        return body

    async def _load(self, context_id: str) -> Room:
        if self.owns(context_id):
            async with self.worker.holding(context_id) as room:
                return room
        room = await self.rooms.load(context_id)  # a read only: not kept
        self.rooms.rooms.pop(context_id, None)
        return room

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
        if msg.reply and self.owns(conn.contextId):
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
        """Log a join/leave (without waiting for it: ``AppendPipe``), tell the room's other
        sockets: the room's owner does, the other workers only keep count."""
        if not self.owns(ch.context_id):
            return
        ts = now_ms()
        cls = UserJoined if ch.kind == "joined" else UserLeft
        ev = cls(contextId=ch.context_id, ts=ts, userId=ch.user_id, userName=ch.user_name)
        self.presence_log.put(
            subjects.chat_presence(ch.context_id), encode_event(ev), uuid.uuid4().hex
        )
        frame = encode_frame("user_" + ch.kind, ms_to_ts(ts), UserData(ch.user_id, ch.user_name))
        try:
            await self.bus.publish(
                subjects.chat_live(ch.context_id),
                frame,
                {subjects.HDR_EXCEPT_USER: ch.user_id, subjects.HDR_LAZY: "1"},
            )
        except Unavailable as exc:  # live only: the others see it in their next presence
            log.warning("presence change not broadcast", extra={"error": str(exc)})

    # --- housekeeping ---------------------------------------------------------------------
    async def _save_loop(self) -> None:
        """Room snapshots: of rooms that left memory, at the next beat; of the rooms in memory
        that changed, every ``SNAPSHOT_S``."""
        all_at = time.monotonic() + SNAPSHOT_S
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)  # a periodic timer
            everything = time.monotonic() >= all_at
            try:
                await self._save_rooms(in_memory=everything)
            except Exception as exc:  # NATS away, say: the next loads read the log instead
                log.warning("room snapshots not saved", extra={"error": repr(exc)})
            if everything:
                all_at = time.monotonic() + SNAPSHOT_S

    def _owns_of(self, partitions: set[int], context_id: str) -> bool:
        partition = self.rooms.partition(context_id)
        return partition in partitions and self.ownership.owns(partition)

    def _want_backfill(self, partition: int | None = None) -> None:
        if not self.settings.chat_snapshot_backfill:
            return
        if partition is not None:
            self._backfill_due.add(partition)
        running = self.backfilled is not None and not self.backfilled.done()
        if self._backfill_open and self._backfill_due and not running:
            self.backfilled = asyncio.create_task(self._backfill(), name="chat-room-backfill")

    async def _backfill(self) -> Backfill | None:
        """Runs while partitions are due (those gained meanwhile make one more run)."""
        started = time.monotonic()
        done = Backfill()
        try:
            while self._backfill_due:
                due, self._backfill_due = self._backfill_due, set()
                run = await backfill(self.rooms, functools.partial(self._owns_of, due))
                done.rooms = run.rooms
                done.saved += run.saved
                done.passes += run.passes
        except Unavailable as exc:  # loads read the log, as before; the next start tries again
            log.warning("room snapshots not backfilled", extra={"error": str(exc)})
            return None
        except Exception:  # a cache not filled is no reason to stop serving
            log.exception("room snapshot backfill failed")
            return None
        if done.saved:
            log.info(
                "room snapshots backfilled",
                extra={
                    "rooms": done.rooms,
                    "saved": done.saved,
                    "passes": done.passes,
                    "seconds": round(time.monotonic() - started, 2),
                },
            )
        return done

    async def _save_rooms(self, in_memory: bool) -> None:
        saved = await self.rooms.save_due(in_memory, self.owns)
        if saved:
            log.debug("room snapshots saved", extra={"rooms": saved})

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
        horizon = self.rooms.horizon()
        for room in self.rooms.rooms.values():
            room.forget_before(horizon)
        self.rooms.bound()  # rooms the worker was busy with at their load may go now
        metrics.ROOMS.set(len(self.rooms.rooms))
        try:
            metrics.CONSUMER_PENDING.set(await self.worker.pending())
        except Exception:  # NATS away: the gauge keeps its last value
            pass
