"""Client-side sliding-window frame limiter, sans-I/O (callers pass ``now``).

The server closes a connection with 1008 once it gets more than
``AG_RATE_FRAMES_PER_MINUTE`` (default 100) frames in any 60 s, ``ping`` not counted
(docs/protocol.md, "Rate limits"). Re-sending a long queue after a reconnect would trip that,
get closed, reconnect, and trip it again; pacing the writer below the limit avoids the
loop. The default leaves a margin because frames can arrive closer together than they
were sent.
"""

from __future__ import annotations

from collections import deque

__all__ = ["SlidingWindow"]


class SlidingWindow:
    def __init__(self, limit: int, window: float = 60.0) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()

    def wait_time(self, now: float) -> float:
        """Seconds to wait before one more frame may go (0 when it may go now)."""
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        if len(self._sent) < self.limit:
            return 0.0
        return self._sent[0] + self.window - now

    def record(self, now: float) -> None:
        self._sent.append(now)

    def reset(self) -> None:
        """Forget history: the server counts per connection."""
        self._sent.clear()
