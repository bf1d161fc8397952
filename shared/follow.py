"""Following a few subjects of the log from a position on, in a background task: how workers
keep the log's picture of presence current (``LoggedPresence``) between takeovers.

With a snapshot key, the follower also saves that picture (``shared/presence_snapshot.py``) every
``SNAPSHOT_S`` while it moved, and once more when it stops, so the next start reads only the
presence events logged since (``replay_presence``). The picture is saved as of the lowest position
its filters have been read to: everything at or before it has been applied."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from shared import tasks
from shared.bus.port import Bus, LogTail, Unavailable
from shared.eventlog import decode_logged
from shared.logs import get_logger
from shared.logscan import matcher, read_whole, walk
from shared.presence import LoggedPresence
from shared.presence_snapshot import Row, decode_snapshot, encode_snapshot

__all__ = ["LogFollower", "replay_presence"]

log = get_logger(__name__)
SNAPSHOT_S = 60.0
PAGE = 10_000  # presence events read per request at start: memory stays bounded

Pictures = Callable[[], Mapping[str, LoggedPresence[Any, Any]]]


class LogFollower:
    def __init__(
        self,
        bus: Bus,
        filters: Sequence[str],
        on_event: Callable[[object], None],
        what: str,
        snapshot: tuple[str, Pictures] | None = None,
    ) -> None:
        self.bus = bus
        self.filters = list(filters)
        self.on_event = on_event
        self.what = what  # the projection name in logs and the skipped-events counter
        self.snapshot = snapshot  # (key, the pictures to save) or None
        self._tails: list[LogTail] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._positions: list[int] = []  # per filter: every entry up to it is applied
        self._saved = 0

    @property
    def position(self) -> int:
        return min(self._positions, default=0)

    def start(self, after: int) -> None:
        """Follow every filter from the entry after ``after`` on."""
        for i, f in enumerate(self.filters):
            tail = self.bus.tail(f, after + 1)
            self._tails.append(tail)
            self._positions.append(after)
            self._tasks.append(asyncio.create_task(self._run(i, tail), name=f"follow-{self.what}"))
        if self.snapshot is not None:
            self._tasks.append(asyncio.create_task(self._saving(), name=f"snap-{self.what}"))

    async def stop(self) -> None:
        await tasks.stop(self._tasks)
        for tail in self._tails:
            await tail.close()
        if self.snapshot is not None:
            try:
                await asyncio.wait_for(self.save(), 5)
            except (Unavailable, TimeoutError) as exc:
                log.warning("presence snapshot not saved", extra={"error": repr(exc)})

    async def save(self) -> bool:
        """Save the picture if it moved since the last save; whether it did."""
        if self.snapshot is None or not self._tails:
            return False
        key, pictures = self.snapshot
        at = self.position
        if at <= self._saved:
            return False
        # Same loop turn as reading the position: the follower tasks cannot apply more between.
        data = encode_snapshot(at, pictures())
        if len(data) > self.bus.max_payload:
            log.warning("presence snapshot too large to save", extra={"bytes": len(data)})
            return False
        await self.bus.save_snapshot(key, data)
        self._saved = at
        return True

    async def _saving(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_S)  # a periodic save: nothing to wait on instead
            try:
                await self.save()
            except Unavailable as exc:
                log.warning("presence snapshot not saved", extra={"error": repr(exc)})

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

    async def _run(self, i: int, tail: LogTail) -> None:
        while True:
            try:
                entries = await tail.fetch(500, 1.0)
            except Exception:  # NATS away: the tail re-opens itself
                log.exception("log not read; trying again", extra={"what": self.what})
                await asyncio.sleep(1.0)  # back off while NATS settles
                continue
            for entry in entries:
                self.on_event(decode_logged(entry.data, entry.seq, entry.subject, self.what))
            if entries:
                self._positions[i] = entries[-1].seq


async def replay_presence(
    bus: Bus,
    key: str,
    filters: Sequence[str],
    what: str,
    restore: Callable[[dict[str, list[Row]]], None],
    apply: Callable[[object], None],
) -> int:
    """Start-up: ``restore`` the last saved pictures, then ``apply`` every presence event on
    ``filters`` logged after them; the log sequence to follow on from.

    That is the log's end as it was *before* reading: each filter is read past it, so nothing
    up to it is missed, and following goes on after it. (The highest sequence read would skip
    what one filter got while another was read.) What is read twice changes nothing: a user's
    state is their last event."""
    end = await bus.log_end()
    after, pictures = await load_presence(bus, key, what, end)
    restore(pictures)
    count = 0
    if after == 0 and await _whole_is_cheaper(bus, filters):
        # No snapshot (a first start): every presence event, in log order, from a read of
        # the whole log (shared/logscan.py; ~10x a filtered read while they are much of it).
        events = walk(bus, end, matcher(filters))
        async with contextlib.aclosing(events):  # the tail closes at once, however this ends
            async for entries in events:
                for entry in entries:
                    count += 1
                    apply(decode_logged(entry.data, entry.seq, entry.subject, what))
    else:
        for subject in filters:
            async for ev in presence_events(bus, subject, after, what):
                count += 1
                apply(ev)
    log.info("presence rebuilt", extra={"what": what, "events": count, "snapshotAt": after})
    return end


async def _whole_is_cheaper(bus: Bus, filters: Sequence[str]) -> bool:
    wanted = 0
    for f in filters:
        wanted += sum((await bus.log_subjects(f)).values())
    return wanted > 0 and await read_whole(bus, wanted)


async def load_presence(
    bus: Bus, key: str, what: str, end: int
) -> tuple[int, dict[str, list[Row]]]:
    """The last saved picture and the log sequence it is up to; ``(0, {})`` when there is none
    (or it cannot be read, or it is past ``end``, the log's end: a log recreated under an old
    snapshot) -- then every presence event is read, as without snapshots."""
    try:
        data = await bus.snapshot(key)
        if data is None:
            return 0, {}
        up_to, pictures = decode_snapshot(data)
    except (Unavailable, ValueError) as exc:
        log.warning("presence snapshot not used", extra={"what": what, "error": repr(exc)})
        return 0, {}
    if up_to > end:
        log.warning("presence snapshot past the log's end: not used", extra={"what": what})
        return 0, {}
    return up_to, pictures


async def presence_events(bus: Bus, subject: str, after: int, what: str) -> AsyncIterator[object]:
    """Every event on ``subject`` after sequence ``after``, a page at a time."""
    start = after + 1
    while True:
        page = await bus.read(subject, start, PAGE)
        for entry in page:
            yield decode_logged(entry.data, entry.seq, entry.subject, what)
        if len(page) < PAGE:
            return
        start = page[-1].seq + 1
