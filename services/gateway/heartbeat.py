"""Presence heartbeats: every ``AG_HEARTBEAT_S`` this gateway tells the services which of its
sockets are where (chat rooms; collaboration sessions and sockets), so a service that restarted
re-learns them and a gateway that died is expired after three silent beats. A final heartbeat
on stop lets the services drop this gateway's sockets at once.

Opens and closes announced between beats carry the same counter (``next_seq``), so a service can
tell a heartbeat composed before an open from one composed after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from shared import subjects, tasks
from shared.bus.port import Bus, Unavailable
from shared.config import Settings
from shared.logs import get_logger
from shared.schemas.commands import (
    AnalyticsWatch,
    CollabHeartbeat,
    Connection,
    GatewayHeartbeat,
    SessionMember,
)
from shared.schemas.wire import encode

__all__ = ["Heartbeats"]

log = get_logger(__name__)

ChatSockets = Callable[[], list[Connection]]
CollabSockets = Callable[[], tuple[list[SessionMember], list[Connection]]]


class Heartbeats:
    def __init__(self, settings: Settings, bus: Bus, gateway_id: str) -> None:
        self.settings = settings
        self.bus = bus
        self.gateway_id = gateway_id
        self.chat: ChatSockets = list
        self.collab: CollabSockets = lambda: ([], [])
        self.analytics: Callable[[], list[str]] = list  # contexts with analytics sockets
        self._seq = 0
        self._task: asyncio.Task[None] | None = None

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gateway-heartbeat")

    async def stop(self) -> None:
        await tasks.stop([self._task])
        if self.bus.connected:  # the services drop this gateway's sockets at once
            await self._send(
                GatewayHeartbeat(self.gateway_id, [], final=True),
                CollabHeartbeat(self.gateway_id, [], final=True),
                AnalyticsWatch(self.gateway_id, [], final=True),
            )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)  # a periodic timer
            if not self.bus.connected:
                continue
            members, conns = self.collab()
            seq = self.next_seq()
            await self._send(
                GatewayHeartbeat(self.gateway_id, self.chat(), seq=seq),
                CollabHeartbeat(self.gateway_id, members, seq=seq, connections=conns),
                AnalyticsWatch(self.gateway_id, self.analytics()),
            )

    async def _send(
        self, chat: GatewayHeartbeat, collab: CollabHeartbeat, watch: AnalyticsWatch
    ) -> None:
        beats: list[tuple[str, msgspec.Struct]] = [
            (subjects.GATEWAY_HEARTBEAT, chat),
            (subjects.COLLAB_HEARTBEAT, collab),
            (subjects.ANALYTICS_WATCH, watch),
        ]
        for subject, beat in beats:
            try:
                await self.bus.publish(subject, encode(beat))
            except Unavailable as exc:
                log.warning("heartbeat failed", extra={"error": str(exc)})
