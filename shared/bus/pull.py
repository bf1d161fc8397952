"""Credit for JetStream pull requests kept open at the server (sans-I/O).

Both continuous readers (the log tail, the command queue) keep what is buffered plus what pull
requests still owe within a window, and ask in chunks once half a chunk is free, so memory stays
bounded and a message is delivered the moment it is stored.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

__all__ = ["Credit"]


@dataclass(frozen=True, slots=True)
class Credit:
    window: int  # most messages buffered or asked for
    chunk: int  # messages per pull request
    expires_s: float  # a request's life at the server when nothing comes
    heartbeat_s: float  # the server's idle heartbeat while a request waits

    def top_up(self, asked: deque[int], buffered: int) -> list[bytes]:
        """The pull requests to send now; each one's batch is appended to ``asked``."""
        room = self.window - buffered - sum(asked)
        out: list[bytes] = []
        while room >= self.chunk // 2 or (room > 0 and not asked):
            n = min(self.chunk, room)
            request = {
                "batch": n,
                "expires": int(self.expires_s * 1e9),
                "idle_heartbeat": int(self.heartbeat_s * 1e9),
            }
            out.append(json.dumps(request).encode())
            asked.append(n)
            room -= n
        return out
