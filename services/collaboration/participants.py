"""Who is in each collaboration session, over all gateways (sans-I/O).

A participant is one per (user, session): the user's first connection into a session makes them
join, their last one out makes them leave, however many tabs they have open. Gateways announce
their session members in heartbeats (``CollabHeartbeat``), so a crashed gateway's members expire
and a restarted service re-learns who is connected. After a restart the log's
``ParticipantJoined``/``ParticipantLeft`` events say who was present; those users count as present
until the start-up grace ends and are then left unless a gateway still has them (as chat presence
does).

A user's role in the participants list is the strongest among their open connections
(host > participant > observer); ``participant_joined`` carries the role of the first one.

The logic is ``shared.presence.PresenceCore`` keyed by (context, session), one slot per
(connection, session) in a gateway and the role as payload; this module maps ``SessionMember``
and ``Change`` onto it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.presence import Change as _CoreChange
from shared.presence import LoggedPresence, Member, PresenceCore
from shared.schemas.commands import SessionMember

__all__ = ["Change", "Participants", "SessionKey"]

SessionKey = tuple[str, str]  # (contextId, sessionId)
_Slot = tuple[str, str]  # (connectionId, sessionId) inside one gateway
_RANK = {"observer": 0, "participant": 1, "host": 2}


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "joined" | "left"
    context_id: str
    session_id: str
    user_id: str
    user_name: str
    role: str


def _strongest(roles: Sequence[str]) -> str:
    return max(roles, key=lambda r: _RANK.get(r, 0))


def _member(m: SessionMember) -> Member[SessionKey, str]:
    return Member((m.contextId, m.sessionId), m.userId, m.userName, m.role)


def _change(ch: _CoreChange[SessionKey, str]) -> Change:
    return Change(ch.kind, ch.room[0], ch.room[1], ch.user_id, ch.user_name, ch.payload)


class Participants:
    def __init__(self) -> None:
        # A last connection out reports its leave even if the log replay still assumes the user
        # (as this module always did); only reachable when assume() runs after opens.
        self._core: PresenceCore[SessionKey, _Slot, str] = PresenceCore(
            _strongest, defer_leave_while_assumed=False
        )

    def members(self, context_id: str, session_id: str) -> list[dict[str, str]]:
        """``[{userId, username, role}]`` of the session, ordered by user id."""
        return [
            {"userId": u.user_id, "username": u.user_name, "role": u.payload}
            for u in self._core.present((context_id, session_id))
        ]

    def sessions(self) -> list[SessionKey]:
        return self._core.rooms()

    def reconcile(self, logged: LoggedPresence[SessionKey, str], key: SessionKey) -> list[Change]:
        """What to announce so that the log says who is in the session now."""
        return [_change(ch) for ch in logged.diff(key, self._core.present(key))]

    def assume(
        self, context_id: str, session_id: str, user_id: str, user_name: str, role: str, here: bool
    ) -> None:
        """Replay of the log's join/leave events on start-up."""
        self._core.assume((context_id, session_id), user_id, user_name, role, here)

    def open(self, gateway: str, m: SessionMember, now: float, seq: int = 0) -> Change | None:
        """A connection joined a session (or re-joined it with another role)."""
        ch = self._core.open(gateway, (m.connectionId, m.sessionId), _member(m), now, seq)
        return _change(ch) if ch else None

    def close(self, gateway: str, connection_id: str, session_id: str) -> Change | None:
        """A connection left a session (or closed)."""
        ch = self._core.close(gateway, (connection_id, session_id))
        return _change(ch) if ch else None

    def heartbeat(
        self,
        gateway: str,
        members: Iterable[SessionMember],
        now: float,
        final: bool = False,
        seq: int | None = None,
    ) -> list[Change]:
        """Reconcile one gateway's announced members with what we hold for it.

        ``seq`` is the gateway's presence counter when it composed the heartbeat: members it
        opened later are not in the list yet and stay.
        """
        announced = {} if final else {(m.connectionId, m.sessionId): _member(m) for m in members}
        return [_change(ch) for ch in self._core.heartbeat(gateway, announced, now, final, seq)]

    def expire(self, now: float, timeout: float) -> list[Change]:
        """Drop every member of gateways silent for longer than ``timeout``."""
        return [_change(ch) for ch in self._core.expire(now, timeout)]

    def settle(self) -> list[Change]:
        """End of the start-up grace: users the log had present but no gateway has are gone."""
        return [_change(ch) for ch in self._core.settle()]
