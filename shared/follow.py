"""Following a few subjects of the log from a position on, in a background task: how workers
keep the log's picture of presence current (``LoggedPresence``) between takeovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from shared import tasks
from shared.bus.port import Bus, LogTail
from shared.eventlog import decode_logged
from shared.logs import get_logger

__all__ = ["LogFollower"]

log = get_logger(__name__)


class LogFollower:
    def __init__(
        self, bus: Bus, filters: Sequence[str], on_event: Callable[[object], None], what: str
    ) -> None:
        self.bus = bus
        self.filters = list(filters)
        self.on_event = on_event
        self.what = what  # the projection name in logs and the skipped-events counter
        self._tails: list[LogTail] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, after: int) -> None:
        """Follow every filter from the entry after ``after`` on."""
        for f in self.filters:
            tail = self.bus.tail(f, after + 1)
            self._tails.append(tail)
            self._tasks.append(asyncio.create_task(self._run(tail), name=f"follow-{self.what}"))

    async def stop(self) -> None:
        await tasks.stop(self._tasks)
        for tail in self._tails:
            await tail.close()

    async def caught_up(self, timeout: float) -> None:
        """Until nothing is left to read (bounded: past ``timeout`` go on as things are)."""
        deadline = time.monotonic() + timeout
        for tail in self._tails:
            while time.monotonic() < deadline:
                try:
                    if await tail.pending() == 0:
                        break
                except Exception:  # NATS away: go on with what was read
                    return
                await asyncio.sleep(0.05)  # the follower task is reading the rest

    async def _run(self, tail: LogTail) -> None:
        while True:
            try:
                entries = await tail.fetch(500, 1.0)
            except Exception:  # NATS away: the tail re-opens itself
                log.exception("log not read; trying again", extra={"what": self.what})
                await asyncio.sleep(1.0)  # back off while NATS settles
                continue
            for entry in entries:
                self.on_event(decode_logged(entry.data, entry.seq, entry.subject, self.what))
