"""One connection in one collaboration session: the gate its live frames pass, and ack order.

- Its ``HoldGate`` brackets a join or snapshot reply: frames arriving meanwhile are kept and,
  once the reply is queued, handed over except edits at or below the version the reply showed
  (it already contains them).
- ``covered`` records the highest version the connection has or will get (handed over, held,
  or in a reply or ack); ``caught_up`` lets an ack wait until the edits before it were handed
  over, so a client with one edit in flight sees the session's edits and its ack in version
  order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from services.gateway.connection import Authed
from services.gateway.fanout import SocketReceiver
from services.gateway.holdgate import HoldGate
from shared.schemas.commands import SessionMember

__all__ = ["Member"]


class Member(SocketReceiver):
    """A session member: its role and state, and the gate for its live frames."""

    __slots__ = ("session_id", "role", "joined", "announced", "gate", "seen", "_progress")

    def __init__(self, authed: Authed, session_id: str, role: str, limit: int) -> None:
        super().__init__(authed)
        self.session_id = session_id
        self.role = role
        self.joined = False  # session_joined was sent
        self.announced = False  # the service was told (heartbeats list it from then on)
        self.gate = HoldGate(authed.conn.push, authed.slow_consumer, limit)
        self.seen = 0  # highest version handed over, held, or covered by a reply or ack
        self._progress = asyncio.Event()

    @property
    def gone(self) -> bool:
        return self.gate.closed

    def offer(
        self, text: str, seq: int | None, droppable: bool, lazy: bool, headers: Mapping[str, str]
    ) -> None:
        if self.gate.offer(text, seq, droppable, lazy) and seq is not None:
            self.covered(seq)

    def covered(self, version: int) -> None:
        if version > self.seen:
            self.seen = version
            self._progress.set()
            self._progress = asyncio.Event()

    async def caught_up(self, version: int, timeout: float) -> bool:
        """Wait until every edit up to ``version`` has been handed over (or held)."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it may swallow a cancellation
                while self.seen < version:
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    def ref(self) -> SessionMember:
        a = self.authed
        return SessionMember(a.context_id, self.session_id, a.id, a.user_id, a.user_name, self.role)
