"""Which worker owns which command partitions: leases in NATS, a fair share each.

Every worker of a service (``chat``, ``collab``) holds two kinds of lease in the ``AG_LEASES``
KV bucket (``Bus.leases``), each renewed every quarter of ``AG_LEASE_S``:

- ``<service>.w.<worker>``: the worker is alive (how the others count the workers);
- ``<service>.p.<n>``: the worker owns partition n, the only one consuming its commands.

Each round a worker renews what it holds, then ``plan`` says what to claim and what to give
up: at most ``ceil(P / workers)`` each. A claim is a KV create (it fails while anyone holds the
key), so two workers never hold one partition's lease at once. A worker gives a partition up
only after it stopped consuming it and its batches are done (``on_lose``), and stops at once
when a renewal is refused or is overdue (it may have been paused past its lease). A dead
worker's leases lapse after ``AG_LEASE_S``; the others' next round takes them.

The lease is the first line; the event log's expected-last-subject-sequence check is the last:
a worker that still writes after its lease lapsed (a long pause) gets ``Conflict`` and reloads.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from prometheus_client import Gauge

from shared import tasks
from shared.bus.port import Bus, Leases
from shared.config import Settings
from shared.logs import get_logger
from shared.partitions import partition_of
from shared.worker import CommandWorker

__all__ = ["Ownership", "plan", "run_partitions", "worker_id"]

log = get_logger(__name__)

OWNED = Gauge("ag_partitions_owned", "Command partitions this worker owns", ["service"])


def plan(
    partitions: int, me: str, workers: Iterable[str], holders: dict[int, str]
) -> tuple[list[int], list[int]]:
    """(partitions to claim, partitions to give up) for worker ``me``: a fair share each.

    Free partitions are tried in an order of the worker's own, so workers starting together
    mostly claim different ones; extras are given up from the highest."""
    live = set(workers) | {me}
    share = math.ceil(partitions / len(live))
    mine = sorted(p for p, h in holders.items() if h == me)
    if len(mine) > share:
        return [], mine[share:]
    start = partition_of(partitions, me)
    order = [(start + i) % partitions for i in range(partitions)]
    free = [p for p in order if p not in holders]
    return free[: share - len(mine)], []


class Ownership:
    """Runs ``plan`` against the lease bucket; calls ``on_gain(p)`` / ``on_lose(p)``."""

    def __init__(
        self,
        leases: Leases,
        service: str,
        worker_id: str,
        partitions: int,
        lease_s: float,
        on_gain: Callable[[int], Coroutine[Any, Any, None]],
        on_lose: Callable[[int], Coroutine[Any, Any, None]],
    ) -> None:
        self.leases = leases
        self.service = service
        self.me = worker_id
        self.partitions = partitions
        self.lease_s = lease_s
        self.on_gain = on_gain
        self.on_lose = on_lose
        self.held: dict[int, tuple[int, float]] = {}  # partition -> (revision, renewed at)
        self._alive: tuple[int, float] | None = None
        self._task: asyncio.Task[None] | None = None
        self._round = asyncio.Lock()
        self._dropping: set[asyncio.Task[None]] = set()

    def owns(self, partition: int) -> bool:
        return partition in self.held

    def _key(self, partition: int) -> str:
        return f"{self.service}.p.{partition}"

    async def start(self) -> None:
        """The first round before returning: a lone worker owns everything once started."""
        await self.step()
        self._task = asyncio.create_task(self._loop(), name=f"{self.service}-ownership")

    async def stop(self, release_s: float = 2.0) -> None:
        """Hand every partition back at once (the others need not wait for the leases to lapse).
        Bounded: with NATS gone too (a whole stack stopping) the leases simply lapse."""
        await tasks.stop([self._task])
        await asyncio.gather(*self._dropping, return_exceptions=True)
        async with self._round:
            held = [(self._key(p), rev) for p, (rev, _) in self.held.items()]
            for p in sorted(self.held):
                await self._give_up(p, release=False)
            try:
                async with asyncio.timeout(release_s):
                    await self._release_all(held)
            except TimeoutError:
                log.warning(
                    "leases not released in time; they lapse", extra={"service": self.service}
                )

    async def _release_all(self, held: list[tuple[str, int]]) -> None:
        alive, self._alive = self._alive, None
        if alive is not None:
            held.append((f"{self.service}.w.{self.me}", alive[0]))
        results = await asyncio.gather(
            *(self.leases.release(key, rev) for key, rev in held), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                log.warning("lease not released", extra={"error": repr(result)})

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 4)  # a periodic timer, not synchronisation
            try:
                await self.step()
            except Exception:  # NATS away: what we hold lapses if this goes on
                log.exception("ownership round failed", extra={"service": self.service})
                self._drop_overdue()

    async def step(self) -> None:
        async with self._round:
            await self._renew()
            workers = await self.leases.holders(f"{self.service}.w.")
            keys = await self.leases.holders(f"{self.service}.p.")
            # Leases under our id that we do not hold are a predecessor's with our id (a restart):
            # free for us to claim again.
            holders = {int(k.rsplit(".", 1)[1]): h for k, h in keys.items() if h != self.me}
            for p in self.held:
                holders[p] = self.me  # what we renewed a moment ago
            names = [k.rsplit(".", 1)[1] for k in workers]
            claim, give_up = plan(self.partitions, self.me, names, holders)
            for p in give_up:
                await self._give_up(p, release=True)
            for p in claim:
                rev = await self.leases.claim(self._key(p), self.me)
                if rev is not None:
                    self.held[p] = (rev, time.monotonic())
                    log.info("partition owned", extra={"service": self.service, "partition": p})
                    await self.on_gain(p)
            OWNED.labels(self.service).set(len(self.held))

    async def _renew(self) -> None:
        now = time.monotonic()
        alive = f"{self.service}.w.{self.me}"
        rev = None
        if self._alive is not None:
            rev = await self.leases.renew(alive, self.me, self._alive[0])
        if rev is None:
            rev = await self.leases.claim(alive, self.me)
        if rev is not None:
            self._alive = (rev, now)
        for p, (revision, _) in list(self.held.items()):
            got = await self.leases.renew(self._key(p), self.me, revision)
            if got is None:
                log.warning("partition lease lost", extra={"service": self.service, "partition": p})
                await self._give_up(p, release=False)
            else:
                self.held[p] = (got, now)

    def _drop_overdue(self) -> None:
        """Leases not renewed for most of their time may be someone else's any moment: stop."""
        now = time.monotonic()
        for p, (_, renewed) in list(self.held.items()):
            if now - renewed > self.lease_s * 0.75:
                log.warning(
                    "partition lease overdue", extra={"service": self.service, "partition": p}
                )
                del self.held[p]
                task = asyncio.get_running_loop().create_task(self.on_lose(p))
                self._dropping.add(task)
                task.add_done_callback(self._dropping.discard)

    async def _give_up(self, p: int, *, release: bool) -> None:
        revision = self.held.pop(p)[0]
        try:
            await self.on_lose(p)
        finally:
            if release:
                try:
                    await self.leases.release(self._key(p), revision)
                except Exception as exc:  # it lapses by itself
                    log.warning("partition lease not released", extra={"error": repr(exc)})

        log.info("partition given up", extra={"service": self.service, "partition": p})


def worker_id(configured: str) -> str:
    """``AG_WORKER_ID``, or host and pid. A restarted worker with the same id takes its own
    leases back at once instead of waiting for them to lapse (a supervisor gives its slots fixed
    ids); ids are KV key tokens, so anything else becomes ``-``."""
    raw = configured or f"{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:64]


def run_partitions(
    settings: Settings,
    bus: Bus,
    worker: CommandWorker[Any, Any, Any],
    service: str,
    on_change: Callable[[int, bool], Awaitable[None]] | None = None,
) -> Ownership:
    """An ``Ownership`` that feeds a command worker the partitions its leases win."""

    async def gain(p: int) -> None:
        worker.own(p)
        if on_change is not None:
            await on_change(p, True)

    async def lose(p: int) -> None:
        await worker.disown(p, wait_s=settings.command_timeout_s)
        if on_change is not None:
            await on_change(p, False)

    return Ownership(
        bus.leases(),
        service,
        worker_id(settings.worker_id),
        settings.partitions,
        settings.lease_s,
        gain,
        lose,
    )
