"""Who is in each room, over all gateways: the generic sans-I/O presence core.

A user is present in a room while at least one of their connections, on any gateway, is open:
the first connection in emits a join, the last one out a leave, however many tabs they have.
Gateways announce their full connection list in heartbeats, so a crashed gateway's connections
expire and a restarted service re-learns who is connected. After a restart the event log says who
was present (``assume``); those users count as present until the start-up grace ends
(``settle``) and are then left unless a gateway still has them.

The core is generic over

- ``K``, the room key (a chat context id; a ``(contextId, sessionId)`` pair),
- ``S``, the slot: what names one connection's membership inside one gateway (a connection id;
  a ``(connectionId, sessionId)`` pair when one connection can be in several rooms),
- ``P``, a per-connection payload (a collaboration role; ``None`` where there is none). A user's
  listed payload is ``combine`` of their open connections' payloads (oldest first), or the
  assumed one while no connection confirms them.

No I/O and no clock reads: callers pass ``now`` (monotonic seconds) in.

Heartbeats race with opens: a gateway composes a heartbeat at its message counter ``seq``, and an
open it announced later (with a higher ``seq``) may be handled first. Such a connection is not in
the heartbeat yet and is not closed by it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from shared.schemas.commands import Connection

__all__ = [
    "Change",
    "ConnectionChange",
    "ConnectionPresence",
    "LoggedPresence",
    "Member",
    "Present",
    "PresenceCore",
]

K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=Hashable)
P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Member(Generic[K, P]):
    """What a gateway announces for one connection in one room."""

    room: K
    user_id: str
    user_name: str
    payload: P


@dataclass(frozen=True, slots=True)
class Change(Generic[K, P]):
    """A user joined or left a room; ``payload`` is the joining/leaving connection's (or the
    assumed one when the start-up grace ends)."""

    kind: Literal["joined", "left"]
    room: K
    user_id: str
    user_name: str
    payload: P


@dataclass(frozen=True, slots=True)
class Present(Generic[P]):
    """One present user of a room, with their combined payload."""

    user_id: str
    user_name: str
    payload: P


@dataclass(slots=True)
class _Room(Generic[S, P]):
    # user -> {(gateway, slot) -> payload}, in opening order
    conns: dict[str, dict[tuple[str, S], P]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    assumed: dict[str, P] = field(default_factory=dict)  # present per the log, not confirmed


def _first(payloads: Sequence[P]) -> P:
    return payloads[0]


class PresenceCore(Generic[K, S, P]):
    """Presence of users in rooms over all gateways.

    ``combine`` folds a user's payloads (their open connections', oldest first, or the single
    assumed one) into the listed one; by default the first. ``defer_leave_while_assumed``: when
    a user's last connection closes while the log still has them present (``assume`` after an
    open), say nothing and leave it to ``settle`` (True), or report the leave right away (False).
    ``drop_unassumed_rooms``: whether ``assume(..., present=False)`` forgets a room it leaves
    empty at once (True) or keeps it until ``settle`` (False); this only orders ``settle``'s
    leaves, which go room by room in the order the rooms were first seen.
    """

    def __init__(
        self,
        combine: Callable[[Sequence[P]], P] = _first,
        *,
        defer_leave_while_assumed: bool = True,
        drop_unassumed_rooms: bool = True,
    ) -> None:
        self._combine = combine
        self._defer_leave_while_assumed = defer_leave_while_assumed
        self._drop_unassumed_rooms = drop_unassumed_rooms
        self._rooms: dict[K, _Room[S, P]] = {}
        self._gateways: dict[str, float] = {}  # gateway -> last heard (monotonic s)
        self._by_gateway: dict[str, dict[S, Member[K, P]]] = {}
        # (gateway, slot) -> the gateway's message counter when it announced the open, so a
        # heartbeat composed before an open (but handled after it) does not close it again
        self._opened_at: dict[tuple[str, S], int] = {}

    def present(self, room: K) -> list[Present[P]]:
        """The room's present users (connected or assumed), ordered by user id."""
        r = self._rooms.get(room)
        if r is None:
            return []
        out: list[Present[P]] = []
        for user in sorted(r.conns.keys() | r.assumed.keys()):
            payloads = list(r.conns.get(user, {}).values()) or [r.assumed[user]]
            out.append(Present(user, r.names.get(user, user), self._combine(payloads)))
        return out

    def rooms(self) -> list[K]:
        return list(self._rooms)

    def assume(self, room: K, user_id: str, user_name: str, payload: P, present: bool) -> None:
        """Replay of the log's join/leave events on start-up."""
        r = self._rooms.setdefault(room, _Room())
        if present:
            r.assumed[user_id] = payload
            r.names[user_id] = user_name
        else:
            r.assumed.pop(user_id, None)
            if self._drop_unassumed_rooms:
                self._drop_empty(room)

    def open(
        self, gateway: str, slot: S, member: Member[K, P], now: float, seq: int = 0
    ) -> Change[K, P] | None:
        """A connection entered a room (or re-entered it with another payload)."""
        self._gateways[gateway] = now
        self._by_gateway.setdefault(gateway, {})[slot] = member
        key = (gateway, slot)
        self._opened_at[key] = max(seq, self._opened_at.get(key, 0))
        r = self._rooms.setdefault(member.room, _Room())
        user = member.user_id
        first = user not in r.conns and user not in r.assumed
        r.conns.setdefault(user, {})[key] = member.payload
        r.names[user] = member.user_name
        r.assumed.pop(user, None)
        if first:
            return Change("joined", member.room, user, member.user_name, member.payload)
        return None

    def close(self, gateway: str, slot: S) -> Change[K, P] | None:
        """A connection left its room (or closed); unknown ones change nothing."""
        member = self._by_gateway.get(gateway, {}).pop(slot, None)
        self._opened_at.pop((gateway, slot), None)
        if member is None:
            return None
        r = self._rooms.get(member.room)
        conns = r.conns.get(member.user_id) if r is not None else None
        if r is None or conns is None:
            return None
        conns.pop((gateway, slot), None)
        if conns:
            return None
        user = member.user_id
        del r.conns[user]
        if self._defer_leave_while_assumed and user in r.assumed:
            return None
        name = r.names.get(user, member.user_name)
        self._drop_empty(member.room)
        return Change("left", member.room, user, name, member.payload)

    def heartbeat(
        self,
        gateway: str,
        announced: Mapping[S, Member[K, P]],
        now: float,
        final: bool = False,
        seq: int | None = None,
    ) -> list[Change[K, P]]:
        """Reconcile one gateway's announced connections with what we hold for it.

        ``seq`` is the gateway's message counter when it composed the heartbeat: connections it
        opened later are not in ``announced`` yet and stay open. A ``final`` heartbeat (the
        gateway is stopping) closes all of them, whatever ``announced`` says.
        """
        listed: Mapping[S, Member[K, P]] = {} if final else announced
        held = dict(self._by_gateway.get(gateway, {}))
        changes: list[Change[K, P]] = []
        for slot in held.keys() - listed.keys():
            if not final and seq is not None and self._opened_at.get((gateway, slot), 0) > seq:
                continue
            ch = self.close(gateway, slot)
            if ch:
                changes.append(ch)
        for slot, member in listed.items():
            if slot not in held:
                ch = self.open(gateway, slot, member, now)
                if ch:
                    changes.append(ch)
        if final:
            self._gateways.pop(gateway, None)
            self._by_gateway.pop(gateway, None)
        else:
            self._gateways[gateway] = now
        return changes

    def expire(self, now: float, timeout: float) -> list[Change[K, P]]:
        """Drop every connection of gateways silent for longer than ``timeout``."""
        changes: list[Change[K, P]] = []
        for gw in [g for g, seen in self._gateways.items() if now - seen > timeout]:
            changes.extend(self.heartbeat(gw, {}, now, final=True))
        return changes

    def settle(self) -> list[Change[K, P]]:
        """End of the start-up grace: users the log had present but no gateway has are gone."""
        changes: list[Change[K, P]] = []
        for room, r in list(self._rooms.items()):
            for user in sorted(r.assumed.keys() - r.conns.keys()):
                changes.append(Change("left", room, user, r.names.get(user, user), r.assumed[user]))
            r.assumed.clear()
            self._drop_empty(room)
        return changes

    def _drop_empty(self, room: K) -> None:
        r = self._rooms.get(room)
        if r is not None and not r.conns and not r.assumed:
            del self._rooms[room]


@dataclass(frozen=True, slots=True)
class ConnectionChange:
    kind: str  # "joined" | "left"
    context_id: str
    user_id: str
    user_name: str


def _member(conn: Connection) -> Member[str, None]:
    return Member(conn.contextId, conn.userId, conn.userName, None)


def _change(ch: Change[str, None]) -> ConnectionChange:
    return ConnectionChange(ch.kind, ch.room, ch.user_id, ch.user_name)


class ConnectionPresence:
    """Who has a connection open in each context over all gateways (chat rooms; the
    collaboration endpoint's sockets): ``PresenceCore`` keyed by context id, one slot per
    connection id, no payload."""

    def __init__(self) -> None:
        # room: context id; slot: connection id (one room per connection). A room the log replay
        # empties stays until settle, which keeps settle's leaves in first-seen room order.
        self._core: PresenceCore[str, str, None] = PresenceCore(drop_unassumed_rooms=False)

    def users(self, context_id: str) -> list[dict[str, str]]:
        return [
            {"userId": u.user_id, "username": u.user_name} for u in self._core.present(context_id)
        ]

    def rooms(self) -> list[str]:
        return self._core.rooms()

    def reconcile(
        self, logged: LoggedPresence[str, None], context_id: str
    ) -> list[ConnectionChange]:
        """What to announce so that the log says who is in the context now."""
        return [_change(ch) for ch in logged.diff(context_id, self._core.present(context_id))]

    def assume(self, context_id: str, user_id: str, user_name: str, present: bool) -> None:
        """Replay of the log's join/leave events on start-up."""
        self._core.assume(context_id, user_id, user_name, None, present)

    def open(
        self, gateway: str, conn: Connection, now: float, seq: int = 0
    ) -> ConnectionChange | None:
        ch = self._core.open(gateway, conn.connectionId, _member(conn), now, seq)
        return _change(ch) if ch else None

    def close(self, gateway: str, connection_id: str) -> ConnectionChange | None:
        ch = self._core.close(gateway, connection_id)
        return _change(ch) if ch else None

    def heartbeat(
        self,
        gateway: str,
        conns: Iterable[Connection],
        now: float,
        final: bool = False,
        seq: int | None = None,
    ) -> list[ConnectionChange]:
        """Reconcile one gateway's announced sockets with what we hold for it.

        ``seq`` is the gateway's message counter when it composed the heartbeat: sockets it
        opened later are not in the list yet and stay open.
        """
        announced = {} if final else {c.connectionId: _member(c) for c in conns}
        return [_change(ch) for ch in self._core.heartbeat(gateway, announced, now, final, seq)]

    def expire(self, now: float, timeout: float) -> list[ConnectionChange]:
        """Drop every socket of gateways silent for longer than ``timeout``."""
        return [_change(ch) for ch in self._core.expire(now, timeout)]

    def settle(self) -> list[ConnectionChange]:
        """End of the start-up grace: users the log had present but no gateway has are gone."""
        return [_change(ch) for ch in self._core.settle()]


class LoggedPresence(Generic[K, P]):
    """Who the log says is in each room (its join/leave events, in order): what a worker that
    takes a partition over compares with who is really there (``diff``), to announce what
    nobody did while the partition had no owner."""

    def __init__(self) -> None:
        self._rooms: dict[K, dict[str, tuple[str, P]]] = {}

    def apply(self, room: K, user_id: str, user_name: str, payload: P, joined: bool) -> None:
        users = self._rooms.setdefault(room, {})
        if joined:
            users[user_id] = (user_name, payload)
        else:
            users.pop(user_id, None)
            if not users:
                del self._rooms[room]

    def rooms(self) -> list[K]:
        return list(self._rooms)

    def entries(self) -> list[tuple[K, str, str, P]]:
        """Everyone the log says is present: ``(room, user id, user name, payload)``."""
        return [
            (room, user, name, payload)
            for room, users in self._rooms.items()
            for user, (name, payload) in users.items()
        ]

    def diff(self, room: K, present: Sequence[Present[P]]) -> list[Change[K, P]]:
        """The changes that bring the log to ``present``: joins, then leaves."""
        logged = self._rooms.get(room, {})
        here = {p.user_id: p for p in present}
        joins = [
            Change("joined", room, u, p.user_name, p.payload)
            for u, p in sorted(here.items())
            if u not in logged
        ]
        leaves = [
            Change("left", room, u, name, payload)
            for u, (name, payload) in sorted(logged.items())
            if u not in here
        ]
        return joins + leaves
