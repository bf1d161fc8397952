"""Pull requests kept open at a JetStream consumer, with credit (sans-I/O).

Both continuous readers (the log tail, the command queue) keep what is buffered plus what pull
requests still owe within a window, and ask in chunks once half a chunk is free, so memory stays
bounded and a message is delivered the moment it is stored. The server serves and expires the
requests in the order they were made, so what each still owes is a queue.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

__all__ = ["Credit", "Requests"]


@dataclass(frozen=True, slots=True)
class Credit:
    window: int  # most messages buffered or asked for
    chunk: int  # messages per pull request
    expires_s: float  # a request's life at the server when nothing comes
    heartbeat_s: float  # the server's idle heartbeat while a request waits


class Requests:
    """The pull requests in flight, oldest first, each with what it still owes."""

    __slots__ = ("credit", "_owed")

    def __init__(self, credit: Credit) -> None:
        self.credit = credit
        self._owed: deque[int] = deque()

    def __bool__(self) -> bool:
        return bool(self._owed)

    def owed(self) -> int:
        return sum(self._owed)

    def clear(self) -> None:
        """The consumer is being replaced: its requests are gone with it."""
        self._owed.clear()

    def top_up(self, buffered: int) -> list[bytes]:
        """The pull requests to send now (each is counted as in flight)."""
        c = self.credit
        room = c.window - buffered - self.owed()
        out: list[bytes] = []
        while room >= c.chunk // 2 or (room > 0 and not self._owed):
            n = min(c.chunk, room)
            request = {
                "batch": n,
                "expires": int(c.expires_s * 1e9),
                "idle_heartbeat": int(c.heartbeat_s * 1e9),
            }
            out.append(json.dumps(request).encode())
            self._owed.append(n)
            room -= n
        return out

    def served(self, n: int) -> None:
        """``n`` messages arrived."""
        owed = self._owed
        while n and owed:
            used = min(n, owed[0])
            n -= used
            owed[0] -= used
            if not owed[0]:
                owed.popleft()

    def status(self, code: str) -> bool:
        """A status message from the server; False when the consumer must be re-created (a 409:
        deleted, leadership change, too many waiting; or anything unexpected)."""
        if code == "408":  # the oldest request expired
            if self._owed:
                self._owed.popleft()
            return True
        return code in ("100", "404")  # an idle heartbeat; no messages
