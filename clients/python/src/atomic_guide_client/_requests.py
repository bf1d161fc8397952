"""Requests awaiting replies: id assignment, futures, correlation, ``unavailable`` retries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from ._dispatch import Frame
from ._outbox import Outbox, Pending, new_request_id, valid_request_id
from .backoff import Backoff
from .errors import AtomicGuideError, ServerError
from .frames import REPLY_TYPES, ClientFrame, ErrorFrame, encode, frame_type

__all__ = ["Requests"]


class Requests:
    """Futures of sent requests, keyed by ``id``; see :class:`~._outbox.Outbox`.

    ``write(payload) -> bool`` puts a frame on the current socket and says whether there
    was one; a request written while disconnected simply waits for the next socket.
    """

    def __init__(
        self,
        *,
        max_pending: int,
        retry_unavailable: int,
        backoff: Backoff,
        write: Callable[[str], bool],
    ) -> None:
        self._outbox = Outbox(max_pending)
        self._retry_unavailable = retry_unavailable
        self._backoff = backoff
        self._write = write
        self._timers: set[asyncio.TimerHandle] = set()

    def __len__(self) -> int:
        return len(self._outbox)

    def create(
        self,
        frame: ClientFrame,
        *,
        request_id: str | None = None,
        scoped: bool = False,
        counted: bool = True,
    ) -> asyncio.Future[Any]:
        """Register and write ``frame``; raises ``QueueFull`` when the bound is reached."""
        rid = request_id or frame.id or new_request_id()
        if not valid_request_id(rid):
            raise ValueError("request id must be 1-64 characters")
        if frame.id != rid:
            frame = msgspec.structs.replace(frame, id=rid)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = Pending(rid, frame_type(frame), encode(frame), future, scoped, counted)
        self._outbox.add(entry)
        future.add_done_callback(lambda f: self._withdraw(rid, f))
        self._write(entry.payload)
        return future

    def match(self, frame: Frame) -> Pending | None:
        """The pending request ``frame`` replies to, if any."""
        if frame.id is None or frame_type(frame) not in REPLY_TYPES:
            return None
        return self._outbox.get(frame.id)

    def will_retry(self, entry: Pending, frame: Frame) -> bool:
        """Is ``frame`` an ``unavailable`` answer that :meth:`settle` will retry?"""
        return (
            isinstance(frame, ErrorFrame)
            and frame.code == "unavailable"
            and entry.retries < self._retry_unavailable
        )

    def settle(self, entry: Pending, frame: Frame) -> None:
        """Resolve ``entry`` with ``frame``: data, ``ServerError``, or a delayed re-send.

        ``unavailable`` means the frame was not applied (docs/protocol.md, "Errors"); it is
        re-sent with the same ``id`` after a backoff delay, ``retry_unavailable`` times.
        """
        if self.will_retry(entry, frame):
            self._later(self._backoff.delay(entry.retries), entry.id)
            entry.retries += 1
            return
        if isinstance(frame, ErrorFrame):
            self._outbox.pop(entry.id)
            if not entry.future.done():
                error = ServerError(frame.code, frame.error or "", frame.data, entry.id)
                entry.future.set_exception(error)
            return
        self._outbox.pop(entry.id)
        if not entry.future.done():
            entry.future.set_result(getattr(frame, "data", None))

    def resend_all(self) -> None:
        """Write every request that outlives sockets again, oldest first, same ``id``."""
        for entry in self._outbox.resendable():
            self._write(entry.payload)

    def fail_scoped(self, error: AtomicGuideError) -> None:
        for entry in self._outbox.pop_scoped():
            if not entry.future.done():
                entry.future.set_exception(error)

    def fail_all(self, error: AtomicGuideError) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for entry in self._outbox.pop_all():
            if not entry.future.done():
                entry.future.set_exception(error)

    def _withdraw(self, rid: str, future: asyncio.Future[Any]) -> None:
        entry = self._outbox.get(rid)
        if future.cancelled() and entry is not None and entry.future is future:
            self._outbox.pop(rid)

    def _later(self, delay: float, rid: str) -> None:
        def fire() -> None:
            self._timers.discard(timer)
            entry = self._outbox.get(rid)
            if entry is not None:
                self._write(entry.payload)

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)
