"""A stand-in gateway for benchmarks: submits commands to the work queue as a gateway does and
awaits each one's result on its own reply subject (no sockets)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec

from shared import subjects
from shared.bus.port import Bus, Message, Subscription
from shared.schemas.commands import CommandResult, Origin
from shared.schemas.wire import encode

__all__ = ["StandInGateway"]

_decoder = msgspec.json.Decoder(CommandResult)


class StandInGateway:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.id = f"bench-{uuid.uuid4().hex[:8]}"
        self._waiting: dict[str, asyncio.Future[CommandResult]] = {}
        self._sub: Subscription | None = None

    async def __aenter__(self) -> StandInGateway:
        self._sub = await self.bus.subscribe(subjects.gateway_replies(self.id), self._on_result)
        return self

    async def __aexit__(self, *_: Any) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def origin(self, connection: str, user: str) -> Origin:
        return Origin(self.id, connection, user, user.title())

    async def call(self, subject: str, command: Any, timeout: float = 60.0) -> CommandResult:
        """Submit ``command`` (it carries ``requestId``) and wait for its result."""
        fut = self._waiting[command.requestId] = asyncio.get_running_loop().create_future()
        try:
            await self.bus.submit(subject, encode(command))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(command.requestId, None)

    async def _on_result(self, msg: Message) -> None:
        result = _decoder.decode(msg.data)
        fut = self._waiting.pop(result.requestId, None)
        if fut is not None and not fut.done():
            fut.set_result(result)
