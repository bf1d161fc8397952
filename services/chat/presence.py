"""Room presence over all gateways (sans-I/O).

A user is present in a room while at least one of their connections, on any gateway, is open:
the first connection in emits a join, the last one out a leave. Gateways announce their full
connection list in heartbeats, so a crashed gateway's sockets expire and a restarted chat service
re-learns who is connected. After a restart the log says who was present; those users count as
present until the grace period ends, and are then left if no gateway still has them.

The logic is ``shared.presence.PresenceCore`` keyed by context id, one slot per connection id and
no payload; this module maps chat's ``Connection`` and ``Change`` onto it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.presence import Change as _CoreChange
from shared.presence import Member, PresenceCore
from shared.schemas.commands import Connection

__all__ = ["Change", "Presence"]


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "joined" | "left"
    context_id: str
    user_id: str
    user_name: str


def _member(conn: Connection) -> Member[str, None]:
    return Member(conn.contextId, conn.userId, conn.userName, None)


def _change(ch: _CoreChange[str, None]) -> Change:
    return Change(ch.kind, ch.room, ch.user_id, ch.user_name)


class Presence:
    def __init__(self) -> None:
        # room: context id; slot: connection id (one room per connection). A room the log replay
        # empties stays until settle, which keeps settle's leaves in first-seen room order.
        self._core: PresenceCore[str, str, None] = PresenceCore(drop_unassumed_rooms=False)

    def users(self, context_id: str) -> list[dict[str, str]]:
        return [
            {"userId": u.user_id, "username": u.user_name} for u in self._core.present(context_id)
        ]

    def assume(self, context_id: str, user_id: str, user_name: str, present: bool) -> None:
        """Replay of the log's join/leave events on start-up."""
        self._core.assume(context_id, user_id, user_name, None, present)

    def open(self, gateway: str, conn: Connection, now: float, seq: int = 0) -> Change | None:
        ch = self._core.open(gateway, conn.connectionId, _member(conn), now, seq)
        return _change(ch) if ch else None

    def close(self, gateway: str, connection_id: str) -> Change | None:
        ch = self._core.close(gateway, connection_id)
        return _change(ch) if ch else None

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
        announced = {} if final else {c.connectionId: _member(c) for c in conns}
        return [_change(ch) for ch in self._core.heartbeat(gateway, announced, now, final, seq)]

    def expire(self, now: float, timeout: float) -> list[Change]:
        """Drop every socket of gateways silent for longer than ``timeout``."""
        return [_change(ch) for ch in self._core.expire(now, timeout)]

    def settle(self) -> list[Change]:
        """End of the start-up grace: users the log had present but no gateway has are gone."""
        return [_change(ch) for ch in self._core.settle()]
