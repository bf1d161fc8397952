"""The collaboration service's presence keeper with the broker failing under it."""

from __future__ import annotations

from typing import Any

from services.collaboration.presence import PresenceKeeper
from services.collaboration.store import DocStore
from shared.bus.memory import MemoryBus
from shared.bus.port import Unavailable
from shared.config import load_settings
from shared.schemas.commands import SessionMember


class FailingNats(MemoryBus):
    def __init__(self) -> None:
        super().__init__()
        self.tries = 0
        self.appends = 0

    async def publish(self, subject: str, data: bytes, headers: Any = None) -> None:
        self.tries += 1
        raise Unavailable("outbound buffer full")

    async def append(self, subject: str, data: bytes, **kw: Any) -> Any:
        self.appends += 1
        raise Unavailable("timeout")


async def test_presence_changes_are_kept_when_neither_log_nor_broadcast_works() -> None:
    nc = FailingNats()
    store = DocStore(load_settings({"AG_JWT_SECRET": "x" * 32}), nc)
    keeper = PresenceKeeper(nc, store, 5.0)
    m = SessionMember("ctx", "s", "c1", "alice", "Alice", "participant")
    await keeper.join("gw", m, 0.0, 1)  # does not raise
    assert keeper.members("ctx", "s") == [
        {"userId": "alice", "username": "Alice", "role": "participant"}
    ]
    await keeper.tick(100.0, 100.0)  # the gateway went silent: left, again without raising
    assert keeper.members("ctx", "s") == [] and nc.tries == 2
    await store.presence_log.stop()  # the joined/left events were tried, failed, logged
    assert nc.appends == 2
