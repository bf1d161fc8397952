"""Session presence as the collaboration service runs it: ``Participants`` plus the event log.

Besides session participants it keeps who has a collaboration socket open in each context at
all (``online``, logged as ``collab.user_connected`` / ``collab.user_disconnected``): analytics
counts a user online from the moment the editor page connects, before any session is joined.

Every change the sans-I/O ``Participants`` reports is logged (``ParticipantJoined`` /
``ParticipantLeft`` on the session's presence subject, which analytics counts) and then sent to
the session's other users on its live subject. One lock keeps the changes in order. Neither step
failing (NATS away) stops the caller: presence is bookkept in memory whatever the log and the
live subject did.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError

from shared import subjects
from shared.logs import get_logger
from shared.presence import ConnectionChange, ConnectionPresence
from shared.schemas.commands import CollabHeartbeat, Connection, SessionMember
from shared.schemas.events import (
    CollabUserConnected,
    CollabUserDisconnected,
    ParticipantJoined,
    ParticipantLeft,
)
from shared.schemas.wire import encode_frame
from shared.timefmt import ms_to_ts, now_ms

from .participants import Change, Participants
from .store import DocStore

__all__ = ["PresenceKeeper"]

log = get_logger(__name__)
_heartbeat_decoder = msgspec.json.Decoder(CollabHeartbeat)


class PresenceKeeper:
    def __init__(self, nc: NATS, store: DocStore, heartbeat_s: float) -> None:
        self.nc = nc
        self.store = store
        self.beat = heartbeat_s
        self.participants = Participants()
        # Users with a collaboration socket open in a context, in a session or not yet
        # (analytics counts them online); logged, never broadcast.
        self.online = ConnectionPresence()
        self._lock = asyncio.Lock()
        self._settled = False

    def members(self, context_id: str, session_id: str) -> list[dict[str, str]]:
        return self.participants.members(context_id, session_id)

    async def rebuild(self) -> None:
        """Who the log says is present; confirmed or left once the gateways have reported."""
        count = 0
        p = self.participants
        async for ev in self.store.presence_events():
            match ev:
                case ParticipantJoined():
                    p.assume(ev.contextId, ev.sessionId, ev.userId, ev.userName, ev.role, True)
                case ParticipantLeft():
                    p.assume(ev.contextId, ev.sessionId, ev.userId, ev.userName, "", False)
                case CollabUserConnected() | CollabUserDisconnected():
                    on = isinstance(ev, CollabUserConnected)
                    self.online.assume(ev.contextId, ev.userId, ev.userName, on)
            count += 1
        log.info("collaboration presence rebuilt", extra={"events": count})

    async def join(self, gateway: str, member: SessionMember, now: float, seq: int) -> None:
        async with self._lock:
            change = self.participants.open(gateway, member, now, seq)
            if change is not None:
                await self._announce(change)

    async def leave(self, gateway: str, member: SessionMember) -> None:
        async with self._lock:
            change = self.participants.close(gateway, member.connectionId, member.sessionId)
            if change is not None:
                await self._announce(change)

    async def connect(self, gateway: str, conn: Connection, now: float, seq: int) -> None:
        async with self._lock:
            change = self.online.open(gateway, conn, now, seq)
            if change is not None:
                await self._announce_online(change)

    async def disconnect(self, gateway: str, conn: Connection) -> None:
        async with self._lock:
            change = self.online.close(gateway, conn.connectionId)
            if change is not None:
                await self._announce_online(change)

    async def on_heartbeat(self, msg: Msg, now: float) -> None:
        try:
            hb = _heartbeat_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        async with self._lock:
            for ch in self.participants.heartbeat(
                hb.gatewayId, hb.members, now, final=hb.final, seq=hb.seq
            ):
                await self._announce(ch)
            for och in self.online.heartbeat(
                hb.gatewayId, hb.connections, now, final=hb.final, seq=hb.seq
            ):
                await self._announce_online(och)

    async def tick(self, now: float, uptime: float) -> None:
        """Expire silent gateways; after the start-up grace, leave users no gateway confirmed."""
        async with self._lock:
            changes = self.participants.expire(now, 3 * self.beat)
            online = self.online.expire(now, 3 * self.beat)
            if not self._settled and uptime > 2.5 * self.beat:
                changes += self.participants.settle()
                online += self.online.settle()
                self._settled = True
            for ch in changes:
                await self._announce(ch)
            for och in online:
                await self._announce_online(och)

    async def _announce_online(self, ch: ConnectionChange) -> None:
        cls = CollabUserConnected if ch.kind == "joined" else CollabUserDisconnected
        ev = cls(contextId=ch.context_id, ts=now_ms(), userId=ch.user_id, userName=ch.user_name)
        try:
            await self.store.append_online(ev)
        except (TimeoutError, nats.errors.Error, APIError) as exc:
            log.warning("online change not logged", extra={"error": repr(exc)})

    async def _announce(self, ch: Change) -> None:
        """Log a join/leave, then tell the session's other users."""
        ts = now_ms()
        ev: ParticipantJoined | ParticipantLeft
        data = {"sessionId": ch.session_id, "userId": ch.user_id, "username": ch.user_name}
        if ch.kind == "joined":
            ev = ParticipantJoined(
                contextId=ch.context_id,
                ts=ts,
                sessionId=ch.session_id,
                userId=ch.user_id,
                userName=ch.user_name,
                role=ch.role,
            )
            data["role"] = ch.role
        else:
            ev = ParticipantLeft(
                contextId=ch.context_id,
                ts=ts,
                sessionId=ch.session_id,
                userId=ch.user_id,
                userName=ch.user_name,
            )
        try:
            await self.store.append_presence(ev)
        except (TimeoutError, nats.errors.Error, APIError) as exc:
            log.warning("presence event not logged", extra={"error": repr(exc)})
        frame = encode_frame("participant_" + ch.kind, ms_to_ts(ts), data)
        try:
            await self.nc.publish(
                subjects.collab_live(ch.context_id, ch.session_id),
                frame,
                headers={subjects.HDR_EXCEPT_USER: ch.user_id},
            )
        except Exception as exc:  # e.g. the outbound buffer is full while NATS is away
            # Live only: the others see the change in the participants of their next join.
            log.warning("presence change not broadcast", extra={"error": repr(exc)})
