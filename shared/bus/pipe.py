"""Appends that must not hold up their caller: sent in order, their acks awaited together.

Presence events (chat and collaboration) are logged for the record (analytics, a restart's
first picture of who was there); the live picture is the gateways' heartbeats. So a join is
answered and broadcast at once, and its event follows: everything put since the last round is
published in put order (one NATS connection keeps that order) and the acks of a round are
awaited together, so a burst of joins costs one fsync round, not one each. A failed append is
logged, as before, and dropped: the heartbeat settles presence after a restart either way.
"""

from __future__ import annotations

import asyncio

from shared.bus.port import Bus
from shared.logs import get_logger

__all__ = ["AppendPipe"]

log = get_logger(__name__)


class AppendPipe:
    def __init__(self, bus: Bus, what: str) -> None:
        self.bus = bus
        self.what = what
        self._queue: list[tuple[str, bytes, str]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def put(self, subject: str, data: bytes, msg_id: str) -> None:
        self._queue.append((subject, data, msg_id))
        self._wake.set()
        if self._task is None:  # started by the first put: nothing to start or forget
            self._task = asyncio.create_task(self._run(), name=f"append-pipe-{self.what}")

    async def stop(self) -> None:
        """Send what was put before the stop (a round under way finishes, not cancelled)."""
        self._stopping = True
        if self._task is not None:
            self._wake.set()
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._round()
            if self._stopping and not self._queue:
                return

    async def _round(self) -> None:
        items, self._queue = self._queue, []
        if not items:
            return
        # gather starts the appends in list order, and each publishes before it first waits.
        done = await asyncio.gather(
            *(self.bus.append(s, d, msg_id=m) for s, d, m in items), return_exceptions=True
        )
        failed = [r for r in done if isinstance(r, BaseException)]
        if failed:
            log.warning(
                f"{self.what} events not logged",
                extra={"count": len(failed), "error": repr(failed[0])},
            )
