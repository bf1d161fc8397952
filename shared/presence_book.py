"""A service's presence bookkeeping, in one place: one lock, changes announced in order, and the
periodic tick every presence needs (expire gateways that stopped heartbeating, and once the
start-up grace is over, settle who the log said was present but no gateway confirmed).

The cores are sans-I/O (``shared.presence``); the service says how to announce a change (log it,
broadcast it). Chat keeps one core (who is in each room); collaboration keeps two (participants
of each session, and who has a collaboration socket open in each context).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

__all__ = ["Announce", "Core", "PresenceBook"]

Announce = Callable[[Any], Awaitable[None]]


class Core(Protocol):
    def expire(self, now: float, timeout: float) -> Sequence[Any]: ...
    def settle(self) -> Sequence[Any]: ...


class PresenceBook:
    """``beat_s``: the gateways' heartbeat interval. A gateway silent for 3 beats is expired;
    the start-up grace is 2.5 beats (every live gateway has heartbeated by then)."""

    def __init__(self, beat_s: float, cores: Sequence[tuple[Core, Announce]]) -> None:
        self.beat = beat_s
        self.cores = list(cores)
        self._lock = asyncio.Lock()
        self._settled = False

    async def change(self, changes: Callable[[], Any], announce: Announce) -> None:
        """Run ``changes`` (a core's open/close/heartbeat) under the lock; announce each change
        it reports, in order, before the next one runs."""
        async with self._lock:
            found = changes()
            if found is None:
                return
            items = list(found) if isinstance(found, list | tuple) else [found]
            for ch in items:
                await announce(ch)

    async def tick(self, now: float, uptime: float) -> None:
        async with self._lock:
            settle = not self._settled and uptime > 2.5 * self.beat
            for core, announce in self.cores:
                changes = list(core.expire(now, 3 * self.beat))
                if settle:
                    changes += core.settle()
                for ch in changes:
                    await announce(ch)
            self._settled = self._settled or settle
