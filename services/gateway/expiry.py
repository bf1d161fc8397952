"""Per-socket deadlines of a whole gateway under one timer (token expiries, keepalive pings).

A timer per socket (``loop.call_later``) costs ~0.5 KB of every idle connection. Here sockets are
filed by the second their deadline falls in (``ExpiryWheel``, sans-I/O) and one loop timer
(``Expiries``) fires at the earliest second that has any. Nothing fires early: a deadline's
second is rounded up, so it fires at most one resolution step late.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from shared.logs import get_logger

__all__ = ["Expiries", "ExpiryWheel", "Filed"]

log = get_logger(__name__)
T = TypeVar("T", bound=Hashable)


class ExpiryWheel(Generic[T]):
    def __init__(self, resolution: float = 1.0) -> None:
        self.resolution = resolution
        self._slots: dict[int, set[T]] = {}
        self._slot_of: dict[T, int] = {}
        self._order: list[int] = []  # slot keys, a heap; keys of emptied slots linger until popped
        self._queued: set[int] = set()  # keys in the heap: each at most once, however often a
        # socket opens and closes within one second

    def __len__(self) -> int:
        return len(self._slot_of)

    def file(self, item: T, at: float) -> None:
        """``item`` expires at ``at`` (seconds), replacing any earlier filing of it."""
        self.discard(item)
        key = math.ceil(at / self.resolution)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            if key not in self._queued:
                self._queued.add(key)
                heapq.heappush(self._order, key)
        slot.add(item)
        self._slot_of[item] = key

    def discard(self, item: T) -> None:
        key = self._slot_of.pop(item, None)
        if key is None:
            return
        slot = self._slots[key]
        slot.discard(item)
        if not slot:
            del self._slots[key]

    def next_at(self) -> float | None:
        """When the earliest filed item is due, or None if nothing is filed."""
        order = self._order
        while order and order[0] not in self._slots:
            self._queued.discard(heapq.heappop(order))
        return order[0] * self.resolution if order else None

    def due(self, now: float) -> list[T]:
        """Take out every item due at ``now``, earliest first."""
        out: list[T] = []
        while (at := self.next_at()) is not None and at <= now:
            key = heapq.heappop(self._order)
            self._queued.discard(key)
            for item in self._slots.pop(key):
                del self._slot_of[item]
                out.append(item)
        return out


class Expiries(Generic[T]):
    """The wheel on the running loop: ``on_expire(item)`` for each item whose time came, by
    ``clock`` (wall-clock seconds by default, as a token's ``exp``)."""

    def __init__(
        self,
        on_expire: Callable[[T], None],
        resolution: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.wheel: ExpiryWheel[T] = ExpiryWheel(resolution)
        self.clock = clock
        self._on_expire = on_expire
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def set(self, item: T, at: float) -> None:
        self.wheel.file(item, at)
        self._arm()

    def discard(self, item: T) -> None:
        self.wheel.discard(item)  # the timer may fire for nothing once; it then re-arms

    def _arm(self) -> None:
        at = self.wheel.next_at()
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(at - self.clock(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        for item in self.wheel.due(self.clock()):
            try:
                self._on_expire(item)
            except Exception:  # one socket's close must not keep the others open
                log.exception("expiry failed")
        self._arm()


class Filed:
    """A timer handle (``cancel()``) for one item of an ``Expiries``."""

    __slots__ = ("_expiries", "_item")

    def __init__(self, expiries: Expiries[Any], item: Hashable) -> None:
        self._expiries = expiries
        self._item = item

    def cancel(self) -> None:
        self._expiries.discard(self._item)
