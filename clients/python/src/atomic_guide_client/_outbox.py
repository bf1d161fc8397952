"""Unacknowledged requests: bounded, ordered, kept across reconnects.

A request (a client frame that gets a reply) stays here from ``send()`` until its reply
arrives. After a reconnect every entry that is not bound to the old connection is sent
again, verbatim and in the original order, with the same ``id``; the server's dedup
window (``AG_DEDUP_WINDOW_S``) makes the re-send harmless.

Overflow policy: refuse the newcomer. ``add`` raises :class:`~.errors.QueueFull` once
``max_pending`` counted entries wait; nothing queued is ever dropped to make room,
because every entry is a caller's awaited future.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import QueueFull

__all__ = ["Outbox", "Pending", "new_request_id"]


def new_request_id() -> str:
    """A fresh correlation / idempotency id: 32 hex chars (docs/protocol.md allows 1-64)."""
    return uuid.uuid4().hex


def valid_request_id(value: str) -> bool:
    return 1 <= len(value) <= 64


@dataclass(slots=True)
class Pending:
    """One request waiting for its reply."""

    id: str
    type: str
    payload: str
    future: asyncio.Future[Any]
    #: Bound to the connection it was sent on (refresh, automatic re-join): failed with
    #: ``Disconnected`` when that connection drops instead of being re-sent.
    scoped: bool = False
    #: Counts toward ``max_pending``. Internal requests do not, so that a full queue can
    #: never block a refresh or a re-subscribe.
    counted: bool = True
    #: ``unavailable`` answers already retried.
    retries: int = 0


class Outbox:
    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.max_pending = max_pending
        self._entries: dict[str, Pending] = {}
        self._counted = 0

    def __len__(self) -> int:
        """Counted entries, the ones ``max_pending`` bounds."""
        return self._counted

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    def add(self, entry: Pending) -> None:
        if entry.id in self._entries:
            raise ValueError(f"request id {entry.id!r} is already pending")
        if entry.counted and self._counted >= self.max_pending:
            raise QueueFull(f"{self._counted} requests await a reply (max_pending)")
        self._entries[entry.id] = entry
        if entry.counted:
            self._counted += 1

    def get(self, request_id: str) -> Pending | None:
        return self._entries.get(request_id)

    def pop(self, request_id: str) -> Pending | None:
        entry = self._entries.pop(request_id, None)
        if entry is not None and entry.counted:
            self._counted -= 1
        return entry

    def resendable(self) -> list[Pending]:
        """Entries to send again on a new connection, oldest first."""
        return [e for e in self._entries.values() if not e.scoped]

    def pop_scoped(self) -> list[Pending]:
        """Remove and return the entries bound to the connection that just ended."""
        scoped = [e for e in self._entries.values() if e.scoped]
        for entry in scoped:
            self.pop(entry.id)
        return scoped

    def pop_all(self) -> list[Pending]:
        entries = list(self._entries.values())
        self._entries.clear()
        self._counted = 0
        return entries
