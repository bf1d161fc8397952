"""The collaboration service's presence keeper with NATS failing under it."""

from __future__ import annotations

from typing import Any

import nats.errors

from services.collaboration.presence import PresenceKeeper
from shared.schemas.commands import SessionMember


class FailingNats:
    def __init__(self) -> None:
        self.tries = 0

    async def publish(self, subject: str, payload: bytes = b"", **kw: Any) -> None:
        self.tries += 1
        raise nats.errors.OutboundBufferLimitError


class FailingStore:
    async def append_presence(self, ev: Any) -> None:
        raise nats.errors.TimeoutError


async def test_presence_changes_are_kept_when_neither_log_nor_broadcast_works() -> None:
    nc = FailingNats()
    keeper = PresenceKeeper(nc, FailingStore(), 5.0)  # type: ignore[arg-type]
    m = SessionMember("ctx", "s", "c1", "alice", "Alice", "participant")
    await keeper.join("gw", m, 0.0, 1)  # does not raise
    assert keeper.members("ctx", "s") == [
        {"userId": "alice", "username": "Alice", "role": "participant"}
    ]
    await keeper.tick(100.0, 100.0)  # the gateway went silent: left, again without raising
    assert keeper.members("ctx", "s") == [] and nc.tries == 2
