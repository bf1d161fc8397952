"""Helpers for the scale-out tests: worker processes with fixed ids, and the lease bucket read
from outside (who owns which partition, as NATS says)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared import subjects
from tests.conftest import T
from tests.helpers import Proc, Stack, wait_chat_ready, wait_collab_ready

__all__ = ["Leases", "start_worker", "start_workers"]


def start_worker(stack: Stack, service: str, worker: str, module: str) -> Proc:
    """A worker process of ``service`` with the id ``worker`` (kept in ``stack.services``)."""
    env = {**stack.env, "AG_WORKER_ID": worker}
    proc = Proc(worker, module, env, stack.tmp / f"{worker}.log")
    proc.start()
    stack.services[worker] = proc
    return proc


_SERVICES = {
    "chat": ("services.chat", wait_chat_ready),
    "collab": ("services.collaboration", wait_collab_ready),
}


async def start_workers(stack: Stack, nc: Any, service: str, count: int) -> tuple[Leases, set[str]]:
    """``count`` workers of ``service`` (``chat`` / ``collab``), started and sharing the
    partitions; the lease reader and the worker ids."""
    module, ready = _SERVICES[service]
    workers = {f"{service}-{i}" for i in range(1, count + 1)}
    for w in sorted(workers):
        start_worker(stack, service, w, module)
    await ready(stack.nats_url)
    leases = Leases(nc, service)
    await leases.until(lambda o: spread(o, workers), 30, f"16 partitions over {count} workers")
    return leases, workers


class Leases:
    """Reads ``AG_LEASES`` with a plain NATS client."""

    def __init__(self, nc: Any, service: str) -> None:
        self.nc = nc
        self.service = service

    async def owners(self) -> dict[int, str]:
        kv = await self.nc.jetstream().key_value(subjects.LEASES_BUCKET)
        found: dict[int, str] = {}
        watcher = await kv.watch(f"{self.service}.p.>", ignore_deletes=True)
        try:
            while (entry := await watcher.updates(timeout=T(5))) is not None:
                if entry.value:
                    found[int(entry.key.rsplit(".", 1)[1])] = entry.value.decode()
        finally:
            await watcher.stop()
        return found

    async def until(self, check: Any, timeout: float, what: str) -> dict[int, str]:
        """Poll the bucket (another process changes it) until ``check(owners)`` holds."""
        deadline = time.monotonic() + T(timeout)
        while True:
            owners = await self.owners()
            if check(owners):
                return owners
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {owners}"
            await asyncio.sleep(0.05)  # polling state another process owns


def spread(owners: dict[int, str], workers: set[str], partitions: int = 16) -> bool:
    """Every partition owned, by exactly the given workers, none over its fair share."""
    if len(owners) != partitions or set(owners.values()) != workers:
        return False
    share = -(-partitions // len(workers))
    return all(list(owners.values()).count(w) <= share for w in workers)
