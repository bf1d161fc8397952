"""Helpers for tests on the in-memory bus: what a service publishes, and injected faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.bus.memory import MemoryBus
from shared.bus.port import Appended, Message, Unavailable
from tests.conftest import T

__all__ = ["FaultyBus", "Tap"]


@dataclass
class Tap:
    """Everything published on some subjects, decoded, in order; ``until`` waits for a
    condition on it or on the bus (woken by each change on the bus, never by a sleep)."""

    frames: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    bus: MemoryBus | None = None

    async def watch(self, bus: MemoryBus, *subjects: str) -> Tap:
        self.bus = bus

        async def on(msg: Message) -> None:
            self.frames.append((msg.subject, json.loads(msg.data), dict(msg.headers)))

        for s in subjects:
            await bus.subscribe(s, on)
        return self

    def of(self, prefix: str) -> list[dict[str, Any]]:
        return [f for s, f, _ in self.frames if s.startswith(prefix)]

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        assert self.bus is not None
        async with asyncio.timeout(T(timeout)):
            while True:
                await self.bus.flush()  # what was published has been handled
                if check():
                    return
                await self.bus.changed(T(timeout))


class FaultyBus(MemoryBus):
    """A memory bus whose n-th ``append_batch`` or ``append`` (a chain is several) can fail
    before storing or after it (the answer lost on the way back):
    ``fail(n) -> ("before" | "after", exception) | None``."""

    def __init__(self, fail: Callable[[int], tuple[str, Exception] | None], **kw: Any) -> None:
        super().__init__(**kw)
        self.fail = fail
        self.batches: list[list[tuple[str, bytes]]] = []

    async def append_batch(
        self,
        subject: str,
        items: Sequence[tuple[str, bytes]],
        *,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> int:
        self.batches.append(list(items))
        fault = self.fail(len(self.batches))
        if fault is not None and fault[0] == "before":
            raise fault[1]
        first = await super().append_batch(subject, items, expect_last=expect_last, timeout=timeout)
        if fault is not None:
            raise fault[1]
        return first

    async def append(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> Appended:
        self.batches.append([(msg_id, data)])
        fault = self.fail(len(self.batches))
        if fault is not None and fault[0] == "before":
            raise fault[1]
        done = await super().append(
            subject, data, msg_id=msg_id, expect_last=expect_last, timeout=timeout
        )
        if fault is not None:
            raise fault[1]
        return done


def lost_answer(n: int) -> Callable[[int], tuple[str, Exception] | None]:
    """The n-th batch is stored, but its answer never comes back."""
    return lambda k: ("after", Unavailable("timeout")) if k == n else None
