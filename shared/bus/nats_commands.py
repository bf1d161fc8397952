"""Commands over NATS: a durable pull consumer on the work-queue stream that heals itself."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from shared import subjects
from shared.bus.port import Command
from shared.logs import get_logger

if TYPE_CHECKING:
    from shared.bus.nats import NatsBus

__all__ = ["CommandQueue"]

log = get_logger(__name__)


class _Command:
    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @property
    def data(self) -> bytes:
        return self._msg.data

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float = 0.0) -> None:
        await self._msg.nak(delay=delay or None)

    async def term(self) -> None:
        await self._msg.term()


class CommandQueue:
    """A durable pull consumer that heals itself: if the consumer or its stream disappears (a
    memory stream after a NATS restart), fetching re-creates them with the same configuration."""

    def __init__(self, bus: NatsBus, subjects_: str, durable: str) -> None:
        self.bus = bus
        self.subjects = subjects_
        self.durable = durable
        self.config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_ack_pending=4096
        )
        self._sub: JetStreamContext.PullSubscription | None = None

    async def _open(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            self._sub = await self.bus.js.pull_subscribe(
                self.subjects,
                durable=self.durable,
                stream=subjects.command_stream(self.subjects),
                config=self.config,
            )
        return self._sub

    async def fetch(self, batch: int, timeout: float) -> list[Command]:
        try:
            sub = await self._open()
            return [_Command(m) for m in await sub.fetch(batch, timeout=timeout)]
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("consumer fetch failed; re-creating", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)  # back off while NATS settles
            await self._heal()
            return []

    async def _heal(self) -> None:
        try:
            await self.bus.restore_streams()
            await self.close()
            await self._open()
        except Exception as exc:  # NATS still away: the next fetch tries again
            log.warning("consumer not re-created yet", extra={"error": repr(exc)})

    async def pending(self) -> int:
        if self._sub is None:
            return 0
        info = await self._sub.consumer_info()
        return int(info.num_pending or 0)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
