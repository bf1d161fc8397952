"""This gateway's side of NATS: live subscriptions per room, command results, heartbeats.

A gateway subscribes only to the rooms it has sockets in. A live frame arrives already encoded
(the service encodes it once for every gateway); it is decoded to text once and the same string
goes to every socket of the room.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.gateway import metrics
from services.gateway.connection import Conn
from services.gateway.ordering import RoomOrder
from shared import subjects
from shared.config import Settings
from shared.errors import CLOSE_SERVICE_RESTART
from shared.eventlog import LogUnavailable, decode_logged, last_on_subjects, read_subject
from shared.logs import get_logger
from shared.schemas.commands import CommandResult, Connection, GatewayHeartbeat
from shared.schemas.events import ChatMessagePosted
from shared.schemas.wire import encode, message_frame

__all__ = ["Accept", "Hub"]

log = get_logger(__name__)

EXCEPT_USER = subjects.HDR_EXCEPT_USER
DROPPABLE = subjects.HDR_DROPPABLE
SEQ = subjects.HDR_SEQ
LOG_SEQ = subjects.HDR_LOG_SEQ
_result_decoder = msgspec.json.Decoder(CommandResult)

# A per-member filter on a live subject: (headers, frame text) -> deliver to this socket? It sees
# the frame already decoded once for all members, so filtering never re-encodes per socket.
Accept = Callable[[Mapping[str, str], str], bool]


@dataclass(slots=True)
class _Ordered:
    log_subject: str  # where the room's messages are in the log
    order: RoomOrder


class Hub:
    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings = settings
        self.nc = nc
        self.gateway_id = uuid.uuid4().hex[:12]
        self._rooms: defaultdict[str, set[Conn]] = defaultdict(set)
        self._subs: dict[str, Subscription] = {}
        self._accept: dict[tuple[str, Conn], Accept] = {}
        self._pending: dict[str, asyncio.Future[CommandResult]] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.conns: set[Conn] = set()
        self._reply_sub: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._presence_seq = 0
        self._ordered: dict[str, _Ordered] = {}  # live subject -> its order (chat rooms)
        self._ready_sub: Subscription | None = None
        self._resync: asyncio.Task[None] | None = None
        self._resync_again = False

    def next_presence_seq(self) -> int:
        self._presence_seq += 1
        return self._presence_seq

    async def start(self) -> None:
        self._reply_sub = await self.nc.subscribe(
            subjects.gateway_replies(self.gateway_id), cb=self._on_result
        )
        self._ready_sub = await self.nc.subscribe(subjects.CHAT_READY, cb=self._on_chat_ready)
        self._heartbeat = asyncio.create_task(self._beat(), name="gateway-heartbeat")

    async def _on_chat_ready(self, msg: Msg) -> None:
        self.resync()

    async def stop(self) -> None:
        for task in (self._heartbeat, self._resync):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._ready_sub is not None:
            await self._ready_sub.unsubscribe()
        if self.nc.is_connected:
            await self.nc.publish(
                subjects.GATEWAY_HEARTBEAT,
                encode(GatewayHeartbeat(self.gateway_id, [], final=True)),
            )
        for sub in list(self._subs.values()):
            await sub.unsubscribe()
        self._subs.clear()
        if self._reply_sub:
            await self._reply_sub.unsubscribe()

    # --- rooms ----------------------------------------------------------------------------
    async def join(
        self,
        subject: str,
        conn: Conn,
        accept: Accept | None = None,
        log_subject: str | None = None,
    ) -> None:
        """Add ``conn`` to the live ``subject``. With ``log_subject`` (chat), frames carrying a
        seq are delivered in order and gaps are filled from that subject of the log."""
        async with self._locks[subject]:
            self._rooms[subject].add(conn)
            if accept is not None:
                self._accept[(subject, conn)] = accept
            if subject not in self._subs:
                self._subs[subject] = await self.nc.subscribe(subject, cb=self._on_live)
                if log_subject is not None:
                    # Subscribed first, then where the log stands: nothing falls in between.
                    self._ordered[subject] = _Ordered(
                        log_subject, await self._baseline(log_subject)
                    )

    async def leave(self, subject: str, conn: Conn) -> None:
        async with self._locks[subject]:
            self._accept.pop((subject, conn), None)
            members = self._rooms.get(subject)
            if members is None:
                return
            members.discard(conn)
            if not members:
                del self._rooms[subject]
                self._ordered.pop(subject, None)
                sub = self._subs.pop(subject, None)
                if sub is not None:
                    await sub.unsubscribe()

    def members(self, subject: str) -> set[Conn]:
        return self._rooms.get(subject, set())

    async def _on_live(self, msg: Msg) -> None:
        members = self._rooms.get(msg.subject)
        if not members:
            return
        headers = msg.headers or {}
        text = msg.data.decode()  # once per broadcast, not per socket
        seq = int(headers[SEQ]) if SEQ in headers else None
        ordered = self._ordered.get(msg.subject) if seq is not None else None
        if ordered is None or seq is None:
            self._fan_out(msg.subject, text, headers, seq)
            return
        log_seq = int(headers[LOG_SEQ]) if LOG_SEQ in headers else None
        async with self._locks[msg.subject]:
            await self._deliver_in_order(msg.subject, ordered, seq, log_seq, text, headers)

    def _fan_out(
        self, subject: str, text: str, headers: Mapping[str, str], seq: int | None
    ) -> None:
        members = self._rooms.get(subject)
        if not members:
            return
        except_user = headers.get(EXCEPT_USER)
        droppable = DROPPABLE in headers
        sent = 0
        filters = self._accept
        for conn in members:
            if except_user is not None and conn.user_id == except_user:
                continue
            accept = filters.get((subject, conn)) if filters else None
            if accept is not None and not accept(headers, text):
                continue
            conn.push(text, droppable=droppable, seq=seq)
            sent += 1
        metrics.BROADCAST_FANOUT.observe(sent)

    # --- ordered rooms (chat) -------------------------------------------------------------
    async def _baseline(self, log_subject: str) -> RoomOrder:
        try:
            last = (await last_on_subjects(self.nc, [log_subject])).get(log_subject)
        except LogUnavailable as exc:  # the first frame sets it instead
            log.warning("room position unknown", extra={"error": str(exc)})
            return RoomOrder()
        if last is None:
            return RoomOrder(0, 0)
        ev = decode_logged(last.data, last.seq, last.subject, "gateway")
        if not isinstance(ev, ChatMessagePosted):
            return RoomOrder()
        return RoomOrder(ev.seq, last.seq)

    async def _deliver_in_order(
        self,
        subject: str,
        ordered: _Ordered,
        seq: int,
        log_seq: int | None,
        text: str,
        headers: Mapping[str, str],
    ) -> None:
        """Hand out one seq'd frame: drop it if old, fill the gap before it first (the caller
        holds the room's lock, so frames and fills never interleave)."""
        verdict = ordered.order.check(seq)
        if verdict == "old":
            metrics.ORDER.labels("dropped").inc()
            return
        if verdict == "gap" and not await self._fill(subject, ordered, seq):
            ordered.order.advance(seq, log_seq)  # every socket was closed: start afresh here
            return
        self._fan_out(subject, text, headers, seq)
        ordered.order.advance(seq, log_seq)

    async def _fill(self, subject: str, ordered: _Ordered, upto: int) -> bool:
        """Hand out the messages between the room's position and ``upto`` (exclusive), read
        back from the log. False if that cannot be done: every socket of the room is then
        closed with 1012 and recovers with ``lastSeq`` (PROTOCOL.md)."""
        order = ordered.order
        need = order.missing(upto)
        if need <= self.settings.recovery_max:
            for attempt in range(4):
                found = await self._read_gap(ordered, upto)
                if found is not None:
                    for ev, log_seq in found:
                        self._fan_out(subject, message_frame(ev).decode(), {}, ev.seq)
                        order.advance(ev.seq, log_seq)
                    metrics.ORDER.labels("filled").inc(len(found))
                    return True
                # A replica may not have the newest messages yet (direct gets on R3 streams).
                await asyncio.sleep(0.1 * (attempt + 1))
        log.warning(
            "room stream cannot be kept whole; closing its sockets",
            extra={"subject": subject, "from": order.last, "to": upto, "missing": need},
        )
        metrics.ORDER.labels("broken").inc()
        for conn in list(self._rooms.get(subject, ())):
            conn.close(CLOSE_SERVICE_RESTART, "message stream interrupted; reconnect with lastSeq")
        return False

    async def _read_gap(
        self, ordered: _Ordered, upto: int
    ) -> list[tuple[ChatMessagePosted, int]] | None:
        """The messages last+1 .. upto-1 with their stream sequences, or None if the log does
        not have them all (yet) or cannot be read."""
        order = ordered.order
        assert order.last is not None
        want = list(range(order.last + 1, upto))
        found: list[tuple[ChatMessagePosted, int]] = []
        start = order.log_seq + 1
        try:
            while len(found) < len(want):
                entries = await read_subject(
                    self.nc, ordered.log_subject, start, limit=len(want) - len(found)
                )
                if not entries:
                    break
                for entry in entries:
                    ev = decode_logged(entry.data, entry.seq, entry.subject, "gateway")
                    if isinstance(ev, ChatMessagePosted) and order.last < ev.seq < upto:
                        found.append((ev, entry.seq))
                start = entries[-1].seq + 1
        except LogUnavailable as exc:
            log.warning("gap fill failed", extra={"error": str(exc)})
            return None
        return found if [ev.seq for ev, _ in found] == want else None

    def resync(self) -> None:
        """Check every ordered room against the log now (after a reconnect to NATS, or when a
        chat service starts): a message logged but never broadcast is handed out at once."""
        if self._resync is not None and not self._resync.done():
            self._resync_again = True
            return
        self._resync = asyncio.create_task(self._resync_rooms(), name="hub-resync")

    async def _resync_rooms(self) -> None:
        while True:
            self._resync_again = False
            for attempt in range(20):  # JetStream may take a few seconds to come back
                try:
                    await self._resync_once()
                    break
                except LogUnavailable as exc:
                    log.warning("room resync failed; retrying", extra={"error": str(exc)})
                    await asyncio.sleep(min(0.25 * (attempt + 1), 2.0))
            if not self._resync_again:
                return

    async def _resync_once(self) -> None:
        rooms = {s: o.log_subject for s, o in self._ordered.items()}
        if not rooms:
            return
        lasts = await last_on_subjects(self.nc, list(rooms.values()))
        for subject, log_subject in rooms.items():
            last = lasts.get(log_subject)
            ev = decode_logged(last.data, last.seq, log_subject, "gateway") if last else None
            if not isinstance(ev, ChatMessagePosted):
                continue
            async with self._locks[subject]:
                ordered = self._ordered.get(subject)
                if ordered is None or ordered.order.last is None:
                    continue
                if ordered.order.check(ev.seq) != "old":
                    metrics.ORDER.labels("resynced").inc()
                    await self._fill(subject, ordered, ev.seq + 1)

    async def broadcast(
        self, subject: str, frame: bytes, *, except_user: str | None = None, droppable: bool = False
    ) -> None:
        headers: dict[str, str] = {}
        if except_user is not None:
            headers[EXCEPT_USER] = except_user
        if droppable:
            headers[DROPPABLE] = "1"
        await self.nc.publish(subject, frame, headers=headers or None)

    # --- commands -------------------------------------------------------------------------
    def expect(self, request_id: str) -> asyncio.Future[CommandResult]:
        fut: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        return fut

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    async def _on_result(self, msg: Msg) -> None:
        try:
            result = _result_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable command result")
            return
        fut = self._pending.pop(result.requestId, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    # --- presence heartbeats --------------------------------------------------------------
    def presence_conns(self) -> list[Connection]:
        return [
            conn.ref()
            for conn in self.conns
            if conn.endpoint == "chat" and conn.identity and conn.context_id and conn.present
        ]

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)  # a periodic timer
            if not self.nc.is_connected:
                continue
            hb = GatewayHeartbeat(
                self.gateway_id, self.presence_conns(), seq=self.next_presence_seq()
            )
            try:
                await self.nc.publish(subjects.GATEWAY_HEARTBEAT, encode(hb))
            except Exception as exc:
                log.warning("heartbeat failed", extra={"error": repr(exc)})

    def stats(self) -> dict[str, Any]:
        return {"rooms": len(self._rooms), "connections": len(self.conns)}
