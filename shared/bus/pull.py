"""Credit for JetStream pull requests kept open at the server (sans-I/O).

Both continuous readers (the log tail, the command queue) keep what is buffered plus what pull
requests still owe within a window, and ask in chunks once half a chunk is free, so memory stays
bounded and a message is delivered the moment it is stored.
"""

from __future__ import annotations

import json
from collections import deque

__all__ = ["top_up"]


def top_up(
    asked: deque[int],
    buffered: int,
    *,
    window: int,
    chunk: int,
    expires_s: float,
    heartbeat_s: float,
) -> list[bytes]:
    """The pull requests to send now; each one's batch is appended to ``asked``."""
    room = window - buffered - sum(asked)
    out: list[bytes] = []
    while room >= chunk // 2 or (room > 0 and not asked):
        n = min(chunk, room)
        request = {
            "batch": n,
            "expires": int(expires_s * 1e9),
            "idle_heartbeat": int(heartbeat_s * 1e9),
        }
        out.append(json.dumps(request).encode())
        asked.append(n)
        room -= n
    return out
