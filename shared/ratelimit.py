"""Sliding-window rate limiters (sans-I/O: the caller passes ``now`` in seconds).

The protocol's rule: within any 60 s, the limit-plus-first event is refused. Refused events
do not count, so a client that backs off gets its budget back as old events age out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

__all__ = ["SlidingWindow", "KeyedLimiter"]


class SlidingWindow:
    __slots__ = ("limit", "window", "_hits")

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._hits: deque[float] | None = None  # made on the first hit: most windows see none

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        hits = self._hits
        while hits and hits[0] <= horizon:
            hits.popleft()

    def hit(self, now: float) -> bool:
        """Count one event at ``now``; False (and not counted) if it is over the limit."""
        self._expire(now)
        if self._hits is None:
            self._hits = deque()
        if len(self._hits) >= self.limit:
            return False
        self._hits.append(now)
        return True

    def idle(self, now: float) -> bool:
        self._expire(now)
        return not self._hits


class KeyedLimiter:
    """One sliding window per key (client IP, room); idle keys are dropped on sweep."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._windows: dict[Hashable, SlidingWindow] = {}
        self._last_sweep = 0.0

    def hit(self, key: Hashable, now: float) -> bool:
        if now - self._last_sweep > self.window:
            self.sweep(now)
        win = self._windows.get(key)
        if win is None:
            win = self._windows[key] = SlidingWindow(self.limit, self.window)
        return win.hit(now)

    def sweep(self, now: float) -> None:
        self._last_sweep = now
        for key in [k for k, w in self._windows.items() if w.idle(now)]:
            del self._windows[key]

    def __len__(self) -> int:
        return len(self._windows)
