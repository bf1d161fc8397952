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
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.gateway import metrics
from services.gateway.connection import Conn
from shared import subjects
from shared.config import Settings
from shared.logs import get_logger
from shared.schemas.commands import CommandResult, Connection, GatewayHeartbeat
from shared.schemas.wire import encode

__all__ = ["Accept", "Hub"]

log = get_logger(__name__)

EXCEPT_USER = subjects.HDR_EXCEPT_USER
DROPPABLE = subjects.HDR_DROPPABLE
SEQ = subjects.HDR_SEQ
_result_decoder = msgspec.json.Decoder(CommandResult)

# A per-member filter on a live subject: (headers, frame text) -> deliver to this socket? It sees
# the frame already decoded once for all members, so filtering never re-encodes per socket.
Accept = Callable[[Mapping[str, str], str], bool]


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

    def next_presence_seq(self) -> int:
        self._presence_seq += 1
        return self._presence_seq

    async def start(self) -> None:
        self._reply_sub = await self.nc.subscribe(
            subjects.gateway_replies(self.gateway_id), cb=self._on_result
        )
        self._heartbeat = asyncio.create_task(self._beat(), name="gateway-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
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
    async def join(self, subject: str, conn: Conn, accept: Accept | None = None) -> None:
        async with self._locks[subject]:
            self._rooms[subject].add(conn)
            if accept is not None:
                self._accept[(subject, conn)] = accept
            if subject not in self._subs:
                self._subs[subject] = await self.nc.subscribe(subject, cb=self._on_live)

    async def leave(self, subject: str, conn: Conn) -> None:
        async with self._locks[subject]:
            self._accept.pop((subject, conn), None)
            members = self._rooms.get(subject)
            if members is None:
                return
            members.discard(conn)
            if not members:
                del self._rooms[subject]
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
        except_user = headers.get(EXCEPT_USER)
        droppable = DROPPABLE in headers
        seq = int(headers[SEQ]) if SEQ in headers else None
        sent = 0
        filters = self._accept
        for conn in members:
            if except_user is not None and conn.user_id == except_user:
                continue
            accept = filters.get((msg.subject, conn)) if filters else None
            if accept is not None and not accept(headers, text):
                continue
            conn.push(text, droppable=droppable, seq=seq)
            sent += 1
        metrics.BROADCAST_FANOUT.observe(sent)

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
        out = []
        for conn in self.conns:
            if conn.endpoint == "chat" and conn.identity and conn.context_id and conn.present:
                out.append(
                    Connection(conn.context_id, conn.id, conn.identity.user_id, conn.identity.name)
                )
        return out

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
