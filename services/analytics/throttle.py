"""When to recompute and publish a metric of a context (sans-I/O: ``now`` is passed in, in ms).

A (context, metric) pair marked dirty becomes due at once, unless it was published less than
``interval_ms`` ago (then when that interval ends: at most one update per second), or computed less
than ``recompute_ms`` ago (a value that did not change is not recomputed for every batch). The
value computed when a pair falls due is the freshest one, so several events within a second cost
one computation. A value equal to the last one published is not sent again.

While the aggregator works through a backlog, callers pass a larger ``min_gap_ms``: the values are
stale until it catches up anyway, and recomputing them for every batch would slow the catching up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["Throttle"]

Key = tuple[str, str]  # (context, metric)


class Throttle:
    def __init__(self, interval_ms: int = 1000, recompute_ms: int = 250) -> None:
        self.interval_ms = interval_ms
        self.recompute_ms = recompute_ms
        self._last: dict[Key, Any] = {}
        self._published_at: dict[Key, int] = {}
        self._computed_at: dict[Key, int] = {}
        self._due: dict[Key, int] = {}

    def mark(self, context_id: str, metrics: Iterable[str], now: int, min_gap_ms: int = 0) -> None:
        for metric in metrics:
            key = (context_id, metric)
            at = now
            if key in self._published_at:
                at = max(at, self._published_at[key] + self.interval_ms)
            if key in self._computed_at:
                gap = max(self.recompute_ms, min_gap_ms)
                at = max(at, self._computed_at[key] + gap)
            self._due[key] = min(at, self._due.get(key, at))

    def due(self, now: int) -> list[Key]:
        ready = [k for k, at in self._due.items() if at <= now]
        for k in ready:
            del self._due[k]
        return ready

    def next_due(self) -> int | None:
        return min(self._due.values(), default=None)

    def offer(
        self, context_id: str, metric: str, value: Any, now: int, timed: bool = False
    ) -> bool:
        """A value computed at ``now``: publish it? Records it if so.

        ``timed``: computed by the periodic timer, not because events arrived; such computations
        do not hold back the next event-driven one (``recompute_ms``).
        """
        key = (context_id, metric)
        if not timed:
            self._computed_at[key] = now
        if key in self._last and self._last[key] == value:
            return False
        published = self._published_at.get(key)
        if published is not None and now - published < self.interval_ms:
            self.mark(context_id, (metric,), now)  # too soon: try again when allowed
            return False
        self._last[key] = value
        self._published_at[key] = now
        return True

    def forget(self, context_id: str) -> None:
        for table in (self._last, self._published_at, self._computed_at, self._due):
            for key in [k for k in table if k[0] == context_id]:
                del table[key]
