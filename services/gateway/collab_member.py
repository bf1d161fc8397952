"""One connection in one collaboration session, and the gate its live frames pass (sans-I/O).

The gate keeps a session's frames in version order for its connection:

- ``hold``/``release`` bracket a join or snapshot reply: frames arriving meanwhile are kept and,
  once the reply is queued, handed over except edits at or below ``floor`` (the version the reply
  showed, which already contains them);
- ``covered`` records the highest version the connection has or will get (handed over, held, or
  in a reply or ack); ``caught_up`` lets an ack wait until the edits before it were handed over.

Overflow policy of the held frames: at ``limit``, droppable frames (cursors) are dropped and
anything else closes the socket as a slow consumer, as ``Conn`` does.
"""

from __future__ import annotations

import asyncio

from services.gateway.connection import Conn
from shared.errors import CLOSE_TRY_AGAIN
from shared.schemas.commands import SessionMember

__all__ = ["Member"]


class Member:
    """A session member: its role and state, and the gate for its live frames."""

    __slots__ = (
        "conn",
        "session_id",
        "role",
        "joined",
        "announced",
        "gone",
        "floor",
        "seen",
        "holds",
        "held",
        "limit",
        "_progress",
    )

    def __init__(self, conn: Conn, session_id: str, role: str, limit: int) -> None:
        self.conn = conn
        self.session_id = session_id
        self.role = role
        self.joined = False  # session_joined was sent
        self.announced = False  # the service was told (heartbeats list it from then on)
        self.gone = False  # left (or the join failed): nothing more is delivered
        self.floor = 0  # edits at or below this version are in a reply the client has
        self.seen = 0  # highest version handed over, held, or covered by a reply or ack
        self.holds = 0
        self.held: list[tuple[str, int | None, bool]] = []
        self.limit = limit
        self._progress = asyncio.Event()

    def offer(self, text: str, version: int | None, droppable: bool) -> None:
        if version is not None:
            if version <= self.floor:
                return
            self.covered(version)
        if not self.holds:
            self.conn.push(text, droppable=droppable)
        elif len(self.held) < self.limit:
            self.held.append((text, version, droppable))
        elif not droppable:
            self.conn.close(CLOSE_TRY_AGAIN, "slow consumer")

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1
        if self.holds:
            return
        held, self.held = self.held, []
        for text, version, droppable in held:
            if self.gone:
                return
            if version is None or version > self.floor:
                self.conn.push(text, droppable=droppable)

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
        ident, ctx = self.conn.identity, self.conn.context_id
        assert ident is not None and ctx is not None
        return SessionMember(
            ctx, self.session_id, self.conn.id, ident.user_id, ident.name, self.role
        )
