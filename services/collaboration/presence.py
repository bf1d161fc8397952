"""Session presence as the collaboration service runs it: ``Participants`` plus the event log.

Every change the sans-I/O ``Participants`` reports is logged (``ParticipantJoined`` /
``ParticipantLeft`` on the session's presence subject, which analytics counts) and then sent to
the session's other users on its live subject. Besides session participants it keeps who has a
collaboration socket open in each context at all (``online``, logged as
``collab.user_connected`` / ``collab.user_disconnected``): analytics counts a user online from
the moment the editor page connects, before any session is joined.

Both run in one ``PresenceBook`` (one lock, changes announced in order, the shared tick). Neither
the log nor the live subject failing (NATS away) stops the caller: presence is bookkept in memory
whatever they did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from shared import subjects
from shared.bus.port import Bus, Message, Unavailable
from shared.follow import replay_presence
from shared.logs import get_logger
from shared.presence import ConnectionChange, ConnectionPresence, LoggedPresence
from shared.presence_book import PresenceBook
from shared.presence_snapshot import Row
from shared.schemas.commands import CollabHeartbeat, Connection, SessionMember
from shared.schemas.events import (
    CollabUserConnected,
    CollabUserDisconnected,
    ParticipantJoined,
    ParticipantLeft,
)
from shared.schemas.frames import ParticipantJoinedData, ParticipantLeftData
from shared.schemas.wire import encode_frame
from shared.timefmt import ms_to_ts, now_ms

from .participants import Change, Participants
from .store import DocStore

__all__ = ["PresenceKeeper"]

log = get_logger(__name__)
PRESENCE_SNAPSHOT = "collab.presence"  # the snapshot key (shared/presence_snapshot.py)
# Two independent sets: the order between them does not matter, only within.
PRESENCE_FILTERS = [subjects.COLLAB_PRESENCE_ALL, subjects.COLLAB_CONNECTIONS_ALL]
_heartbeat_decoder = msgspec.json.Decoder(CollabHeartbeat)


class PresenceKeeper:
    def __init__(
        self,
        bus: Bus,
        store: DocStore,
        heartbeat_s: float,
        owns: Callable[[str, str | None], bool] = lambda _c, _s: True,
    ) -> None:
        self.bus = bus
        self.owns = owns  # only the owner of a document (a context) logs and broadcasts
        self.store = store
        self.participants = Participants()
        self.online = ConnectionPresence()
        # What the log says, followed live (``follow``): reconciled after a takeover.
        self.logged_participants = LoggedPresence[tuple[str, str], str]()
        self.logged_online = LoggedPresence[str, None]()
        self.book = PresenceBook(
            heartbeat_s,
            [(self.participants, self._announce), (self.online, self._announce_online)],
        )

    def members(self, context_id: str, session_id: str) -> list[dict[str, str]]:
        return self.participants.members(context_id, session_id)

    async def rebuild(self) -> int:
        """Who the log says is present (the last snapshot, then the presence events logged
        after it); confirmed or left once the gateways have reported. The log sequence that
        following goes on from."""
        return await replay_presence(
            self.bus,
            PRESENCE_SNAPSHOT,
            PRESENCE_FILTERS,
            "collaboration",
            self._restore,
            self._replayed,
        )

    def _restore(self, pictures: dict[str, list[Row]]) -> None:
        for room, user, name, role in pictures.get("participants", []):
            assert isinstance(room, tuple)
            ctx, session = room
            self.participants.assume(ctx, session, user, name, role or "", True)
            self.logged_participants.apply((ctx, session), user, name, role or "", True)
        for ctx, user, name, _ in pictures.get("online", []):
            assert isinstance(ctx, str)
            self.online.assume(ctx, user, name, True)
            self.logged_online.apply(ctx, user, name, None, True)

    def _replayed(self, ev: object) -> None:
        self._assume(ev)
        self.follow(ev)

    def pictures(self) -> dict[str, LoggedPresence[Any, Any]]:
        """What the snapshot keeps (``shared/presence_snapshot.py``)."""
        return {"participants": self.logged_participants, "online": self.logged_online}

    def _assume(self, ev: object) -> None:
        p = self.participants
        match ev:
            case ParticipantJoined():
                p.assume(ev.contextId, ev.sessionId, ev.userId, ev.userName, ev.role, True)
            case ParticipantLeft():
                p.assume(ev.contextId, ev.sessionId, ev.userId, ev.userName, "", False)
            case CollabUserConnected() | CollabUserDisconnected():
                on = isinstance(ev, CollabUserConnected)
                self.online.assume(ev.contextId, ev.userId, ev.userName, on)

    def follow(self, ev: object) -> None:
        """One presence event from the log into the logged picture."""
        match ev:
            case ParticipantJoined() | ParticipantLeft():
                role = ev.role if isinstance(ev, ParticipantJoined) else ""
                key = (ev.contextId, ev.sessionId)
                joined = isinstance(ev, ParticipantJoined)
                self.logged_participants.apply(key, ev.userId, ev.userName, role, joined)
            case CollabUserConnected() | CollabUserDisconnected():
                on = isinstance(ev, CollabUserConnected)
                self.logged_online.apply(ev.contextId, ev.userId, ev.userName, None, on)

    async def reconcile(self, owned: Callable[[str, str | None], bool]) -> None:
        """Announce what changed, in the sessions and contexts ``owned`` selects, while nobody
        owned them: who is there now against what the log says."""
        sessions = {*self.participants.sessions(), *self.logged_participants.rooms()}
        contexts = {*self.online.rooms(), *self.logged_online.rooms()}

        def joined_left() -> list[Change]:
            out: list[Change] = []
            for key in sorted(k for k in sessions if owned(k[0], k[1])):
                out += self.participants.reconcile(self.logged_participants, key)
            return out

        def online() -> list[ConnectionChange]:
            out: list[ConnectionChange] = []
            for ctx in sorted(c for c in contexts if owned(c, None)):
                out += self.online.reconcile(self.logged_online, ctx)
            return out

        await self.book.change(joined_left, self._announce)
        await self.book.change(online, self._announce_online)

    async def join(self, gateway: str, member: SessionMember, now: float, seq: int) -> None:
        await self.book.change(
            lambda: self.participants.open(gateway, member, now, seq), self._announce
        )

    async def leave(self, gateway: str, member: SessionMember) -> None:
        await self.book.change(
            lambda: self.participants.close(gateway, member.connectionId, member.sessionId),
            self._announce,
        )

    async def connect(self, gateway: str, conn: Connection, now: float, seq: int) -> None:
        await self.book.change(
            lambda: self.online.open(gateway, conn, now, seq), self._announce_online
        )

    async def disconnect(self, gateway: str, conn: Connection) -> None:
        await self.book.change(
            lambda: self.online.close(gateway, conn.connectionId), self._announce_online
        )

    async def on_heartbeat(self, msg: Message, now: float) -> None:
        try:
            hb = _heartbeat_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        await self.book.change(
            lambda: self.participants.heartbeat(
                hb.gatewayId, hb.members, now, final=hb.final, seq=hb.seq
            ),
            self._announce,
        )
        await self.book.change(
            lambda: self.online.heartbeat(
                hb.gatewayId, hb.connections, now, final=hb.final, seq=hb.seq
            ),
            self._announce_online,
        )

    async def tick(self, now: float, uptime: float) -> None:
        """Expire silent gateways; after the start-up grace, leave users no gateway confirmed."""
        await self.book.tick(now, uptime)

    async def _announce_online(self, ch: ConnectionChange) -> None:
        if not self.owns(ch.context_id, None):
            return
        cls = CollabUserConnected if ch.kind == "joined" else CollabUserDisconnected
        ev = cls(contextId=ch.context_id, ts=now_ms(), userId=ch.user_id, userName=ch.user_name)
        self.store.log_online(ev)

    async def _announce(self, ch: Change) -> None:
        """Log a join/leave (without waiting for it), tell the session's other users."""
        if not self.owns(ch.context_id, ch.session_id):
            return
        ts = now_ms()
        ev: ParticipantJoined | ParticipantLeft
        data: ParticipantJoinedData | ParticipantLeftData
        if ch.kind == "joined":
            ev = ParticipantJoined(
                contextId=ch.context_id,
                ts=ts,
                sessionId=ch.session_id,
                userId=ch.user_id,
                userName=ch.user_name,
                role=ch.role,
            )
            data = ParticipantJoinedData(ch.session_id, ch.user_id, ch.user_name, ch.role)
        else:
            ev = ParticipantLeft(
                contextId=ch.context_id,
                ts=ts,
                sessionId=ch.session_id,
                userId=ch.user_id,
                userName=ch.user_name,
            )
            data = ParticipantLeftData(ch.session_id, ch.user_id, ch.user_name)
        self.store.log_presence(ev)
        frame = encode_frame("participant_" + ch.kind, ms_to_ts(ts), data)
        try:
            await self.bus.publish(
                subjects.collab_live(ch.context_id, ch.session_id),
                frame,
                {subjects.HDR_EXCEPT_USER: ch.user_id, subjects.HDR_LAZY: "1"},
            )
        except Unavailable as exc:
            # Live only: the others see the change in the participants of their next join.
            log.warning("presence change not broadcast", extra={"error": str(exc)})
