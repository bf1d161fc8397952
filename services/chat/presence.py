"""Room presence over all gateways (sans-I/O).

A user is present in a room while at least one of their connections, on any gateway, is open:
the first connection in emits a join, the last one out a leave. Gateways announce their full
connection list in heartbeats, so a crashed gateway's sockets expire and a restarted chat service
re-learns who is connected. After a restart the log says who was present; those users count as
present until the grace period ends, and are then left if no gateway still has them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.schemas.commands import Connection

__all__ = ["Change", "Presence"]


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "joined" | "left"
    context_id: str
    user_id: str
    user_name: str


@dataclass(slots=True)
class _Room:
    # user -> {(gateway, connection)}
    conns: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    assumed: set[str] = field(default_factory=set)  # present per the log, not yet confirmed


class Presence:
    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._gateways: dict[str, float] = {}  # gateway -> last heard (monotonic s)
        self._by_gateway: dict[str, dict[str, Connection]] = {}
        # (gateway, connection) -> the gateway's message counter when it announced the open, so a
        # heartbeat composed before an open (but handled after it) does not close it again
        self._opened_at: dict[tuple[str, str], int] = {}

    def users(self, context_id: str) -> list[dict[str, str]]:
        room = self._rooms.get(context_id)
        if room is None:
            return []
        present = set(room.conns) | room.assumed
        return [{"userId": u, "username": room.names[u]} for u in sorted(present)]

    def assume(self, context_id: str, user_id: str, user_name: str, present: bool) -> None:
        """Replay of the log's join/leave events on start-up."""
        room = self._rooms.setdefault(context_id, _Room())
        if present:
            room.assumed.add(user_id)
            room.names[user_id] = user_name
        else:
            room.assumed.discard(user_id)

    def open(self, gateway: str, conn: Connection, now: float, seq: int = 0) -> Change | None:
        self._gateways[gateway] = now
        self._by_gateway.setdefault(gateway, {})[conn.connectionId] = conn
        key0 = (gateway, conn.connectionId)
        self._opened_at[key0] = max(seq, self._opened_at.get(key0, 0))
        room = self._rooms.setdefault(conn.contextId, _Room())
        key = (gateway, conn.connectionId)
        first = conn.userId not in room.conns and conn.userId not in room.assumed
        room.conns.setdefault(conn.userId, set()).add(key)
        room.names[conn.userId] = conn.userName
        room.assumed.discard(conn.userId)
        if first:
            return Change("joined", conn.contextId, conn.userId, conn.userName)
        return None

    def close(self, gateway: str, connection_id: str) -> Change | None:
        conn = self._by_gateway.get(gateway, {}).pop(connection_id, None)
        self._opened_at.pop((gateway, connection_id), None)
        if conn is None:
            return None
        room = self._rooms.get(conn.contextId)
        if room is None:
            return None
        keys = room.conns.get(conn.userId)
        if keys is None:
            return None
        keys.discard((gateway, connection_id))
        if keys:
            return None
        del room.conns[conn.userId]
        if conn.userId in room.assumed:
            return None
        name = room.names.get(conn.userId, conn.userId)
        self._drop_empty(conn.contextId)
        return Change("left", conn.contextId, conn.userId, name)

    def heartbeat(
        self,
        gateway: str,
        conns: Iterable[Connection],
        now: float,
        final: bool = False,
        seq: int | None = None,
    ) -> list[Change]:
        """Reconcile one gateway's announced sockets with what we hold for it.

        ``seq`` is the gateway's message counter when it composed the heartbeat: sockets it
        opened later are not in the list yet and stay open.
        """
        announced = {} if final else {c.connectionId: c for c in conns}
        held = dict(self._by_gateway.get(gateway, {}))
        changes: list[Change] = []
        for cid in held.keys() - announced.keys():
            if not final and seq is not None and self._opened_at.get((gateway, cid), 0) > seq:
                continue
            ch = self.close(gateway, cid)
            if ch:
                changes.append(ch)
        for cid, conn in announced.items():
            if cid not in held:
                ch = self.open(gateway, conn, now)
                if ch:
                    changes.append(ch)
        if final:
            self._gateways.pop(gateway, None)
            self._by_gateway.pop(gateway, None)
        else:
            self._gateways[gateway] = now
        return changes

    def expire(self, now: float, timeout: float) -> list[Change]:
        """Drop every socket of gateways silent for longer than ``timeout``."""
        changes: list[Change] = []
        for gw in [g for g, seen in self._gateways.items() if now - seen > timeout]:
            changes.extend(self.heartbeat(gw, (), now, final=True))
        return changes

    def settle(self) -> list[Change]:
        """End of the start-up grace: users the log had present but no gateway has are gone."""
        changes: list[Change] = []
        for ctx, room in list(self._rooms.items()):
            for user in sorted(room.assumed - room.conns.keys()):
                changes.append(Change("left", ctx, user, room.names.get(user, user)))
            room.assumed.clear()
            self._drop_empty(ctx)
        return changes

    def _drop_empty(self, context_id: str) -> None:
        room = self._rooms.get(context_id)
        if room is not None and not room.conns and not room.assumed:
            del self._rooms[context_id]
