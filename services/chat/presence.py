"""Room presence over all gateways (sans-I/O): ``shared.presence.ConnectionPresence``.

A user is present in a room while at least one of their connections, on any gateway, is open:
the first connection in emits a join, the last one out a leave. Gateways announce their full
connection list in heartbeats, so a crashed gateway's sockets expire and a restarted chat service
re-learns who is connected. After a restart the log says who was present; those users count as
present until the grace period ends, and are then left if no gateway still has them.
"""

from __future__ import annotations

from shared.presence import ConnectionChange as Change
from shared.presence import ConnectionPresence as Presence

__all__ = ["Change", "Presence"]
