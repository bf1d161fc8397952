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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

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


@dataclass(slots=True)
class _Session:
    # user -> {(gateway, connectionId) -> role}
    conns: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    assumed: dict[str, str] = field(default_factory=dict)  # user -> role, per the log only


class Participants:
    def __init__(self) -> None:
        self._sessions: dict[SessionKey, _Session] = {}
        self._gateways: dict[str, float] = {}  # gateway -> last heard (monotonic s)
        self._by_gateway: dict[str, dict[_Slot, SessionMember]] = {}
        # (gateway, connection, session) -> the gateway's presence counter at the open, so a
        # heartbeat composed before the open (but handled after it) does not close it again
        self._opened_at: dict[tuple[str, str, str], int] = {}

    def members(self, context_id: str, session_id: str) -> list[dict[str, str]]:
        """``[{userId, username, role}]`` of the session, ordered by user id."""
        s = self._sessions.get((context_id, session_id))
        if s is None:
            return []
        out = []
        for user in sorted(s.conns.keys() | s.assumed.keys()):
            roles = list(s.conns.get(user, {}).values()) or [s.assumed[user]]
            role = max(roles, key=lambda r: _RANK.get(r, 0))
            out.append({"userId": user, "username": s.names.get(user, user), "role": role})
        return out

    def assume(
        self, context_id: str, session_id: str, user_id: str, user_name: str, role: str, here: bool
    ) -> None:
        """Replay of the log's join/leave events on start-up."""
        s = self._sessions.setdefault((context_id, session_id), _Session())
        if here:
            s.assumed[user_id] = role
            s.names[user_id] = user_name
        else:
            s.assumed.pop(user_id, None)
            self._drop_empty((context_id, session_id))

    def open(self, gateway: str, m: SessionMember, now: float, seq: int = 0) -> Change | None:
        """A connection joined a session (or re-joined it with another role)."""
        self._gateways[gateway] = now
        self._by_gateway.setdefault(gateway, {})[(m.connectionId, m.sessionId)] = m
        key = (gateway, m.connectionId, m.sessionId)
        self._opened_at[key] = max(seq, self._opened_at.get(key, 0))
        s = self._sessions.setdefault((m.contextId, m.sessionId), _Session())
        first = m.userId not in s.conns and m.userId not in s.assumed
        s.conns.setdefault(m.userId, {})[(gateway, m.connectionId)] = m.role
        s.names[m.userId] = m.userName
        s.assumed.pop(m.userId, None)
        if first:
            return Change("joined", m.contextId, m.sessionId, m.userId, m.userName, m.role)
        return None

    def close(self, gateway: str, connection_id: str, session_id: str) -> Change | None:
        """A connection left a session (or closed)."""
        m = self._by_gateway.get(gateway, {}).pop((connection_id, session_id), None)
        self._opened_at.pop((gateway, connection_id, session_id), None)
        if m is None:
            return None
        key = (m.contextId, m.sessionId)
        s = self._sessions.get(key)
        conns = s.conns.get(m.userId) if s else None
        if s is None or conns is None:
            return None
        conns.pop((gateway, connection_id), None)
        if conns:
            return None
        del s.conns[m.userId]
        name = s.names.get(m.userId, m.userName)
        self._drop_empty(key)
        return Change("left", m.contextId, m.sessionId, m.userId, name, m.role)

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
        announced = {} if final else {(m.connectionId, m.sessionId): m for m in members}
        held = dict(self._by_gateway.get(gateway, {}))
        changes: list[Change] = []
        for conn_id, session_id in held.keys() - announced.keys():
            opened = self._opened_at.get((gateway, conn_id, session_id), 0)
            if not final and seq is not None and opened > seq:
                continue
            ch = self.close(gateway, conn_id, session_id)
            if ch:
                changes.append(ch)
        for slot, m in announced.items():
            if slot not in held:
                ch = self.open(gateway, m, now)
                if ch:
                    changes.append(ch)
        if final:
            self._gateways.pop(gateway, None)
            self._by_gateway.pop(gateway, None)
        else:
            self._gateways[gateway] = now
        return changes

    def expire(self, now: float, timeout: float) -> list[Change]:
        """Drop every member of gateways silent for longer than ``timeout``."""
        changes: list[Change] = []
        for gw in [g for g, seen in self._gateways.items() if now - seen > timeout]:
            changes.extend(self.heartbeat(gw, (), now, final=True))
        return changes

    def settle(self) -> list[Change]:
        """End of the start-up grace: users the log had present but no gateway has are gone."""
        changes: list[Change] = []
        for key, s in list(self._sessions.items()):
            for user in sorted(s.assumed.keys() - s.conns.keys()):
                name = s.names.get(user, user)
                changes.append(Change("left", key[0], key[1], user, name, s.assumed[user]))
            s.assumed.clear()
            self._drop_empty(key)
        return changes

    def _drop_empty(self, key: SessionKey) -> None:
        s = self._sessions.get(key)
        if s is not None and not s.conns and not s.assumed:
            del self._sessions[key]
