"""The gateway's parts on the in-memory bus, with sockets that are just lists (no network)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from services.gateway.commands import CommandClient
from services.gateway.connection import Authed, Conn
from services.gateway.fanout import FanOut
from services.gateway.heartbeat import Heartbeats
from services.gateway.parts import Parts
from shared.auth import Identity
from shared.bus.memory import MemoryBus
from shared.config import Settings, load_settings
from tests.conftest import T

__all__ = ["Kit", "Socket"]


class Socket:
    """A connection whose socket is a queue of the frames the server sent (decoded)."""

    def __init__(self, endpoint: str, queue: int = 64) -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: tuple[int, str] | None = None

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.close":
                self.closed = (message["code"], message["reason"])
            else:
                await self.sent.put(json.loads(message["text"]))

        self.conn = Conn(endpoint, send, queue, "peer")
        self.conn.start()

    def open(self, user: str, ctx: str, roles: tuple[str, ...] = ("learner",)) -> Authed:
        return self.conn.open(Identity(user, user.title(), frozenset({ctx}), roles, 1e12), ctx)

    async def next(self, timeout: float = 2.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.sent.get(), T(timeout))

    async def nothing_more(self, within: float = 0.2) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.sent.get(), within)

    async def stop(self) -> None:
        await self.conn.stop()


class Kit:
    """A bus, a fan-out, a command client and heartbeats, as one gateway has them."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings(
            {"AG_JWT_SECRET": "x" * 64, "AG_COMMAND_TIMEOUT_S": "1"}
        )
        self.bus = MemoryBus()
        self.fanout = FanOut(self.settings, self.bus)
        self.commands = CommandClient(self.settings, self.bus, "gw1")
        self.heartbeats = Heartbeats(self.settings, self.bus, "gw1")

    @property
    def parts(self) -> Parts:
        return Parts(self.settings, self.bus, self.fanout, self.commands, self.heartbeats)

    async def start(self) -> Kit:
        await self.fanout.start()
        await self.commands.start()
        return self

    async def stop(self) -> None:
        await self.fanout.stop()
        await self.commands.stop()
        await self.bus.close()
