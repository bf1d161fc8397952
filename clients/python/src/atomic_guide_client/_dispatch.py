"""Delivery of server frames to the application: callbacks and the iteration inbox."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from .frames import ServerFrame, UnknownFrame, frame_type

__all__ = ["Callback", "Frame", "Handlers", "Inbox", "OwnedTasks"]

Frame: TypeAlias = ServerFrame | UnknownFrame
Callback: TypeAlias = Callable[[Frame], Awaitable[None] | None]

#: ``on(ANY, cb)`` receives every frame.
ANY = "*"


class Handlers:
    """Per-type callbacks. Sync ones run inline; async ones are returned to be scheduled."""

    def __init__(self, logger: logging.Logger) -> None:
        self._by_type: dict[str, list[Callback]] = {}
        self._logger = logger

    def add(self, type_: str, callback: Callback) -> Callable[[], None]:
        callbacks = self._by_type.setdefault(type_, [])
        callbacks.append(callback)

        def remove() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return remove

    def dispatch(self, frame: Frame) -> list[Awaitable[None]]:
        """Call the callbacks of ``frame``; return the awaitables that async ones produced.

        A callback that raises is logged and does not stop the others or the client.
        """
        pending: list[Awaitable[None]] = []
        for callback in [*self._by_type.get(frame_type(frame), ()), *self._by_type.get(ANY, ())]:
            try:
                result = callback(frame)
            except Exception:
                self._logger.exception("callback for %r frame failed", frame_type(frame))
                continue
            if inspect.isawaitable(result):
                pending.append(result)
        return pending


class Inbox:
    """Frames waiting for ``async for``; bounded, drop-oldest.

    Overflow policy: when ``maxsize`` frames wait, the oldest one is discarded and
    counted in ``dropped``; the connection never stalls on an application that does not
    iterate (one that only uses callbacks, say). ``maxsize=0`` disables iteration.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self.dropped = 0
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None

    def put(self, frame: Frame) -> None:
        if self.maxsize == 0 or self._closed:
            return
        if len(self._frames) >= self.maxsize:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    def close(self, error: BaseException | None = None) -> None:
        """End iteration once the waiting frames are taken; then raise ``error`` if given."""
        if not self._closed:
            self._closed = True
            self._error = error
            self._ready.set()

    async def get(self) -> Frame:
        if self.maxsize == 0:
            raise RuntimeError("iteration is disabled (max_inbox=0); use on() callbacks")
        while True:
            if self._frames:
                return self._frames.popleft()
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()


class OwnedTasks:
    """Tasks the client runs for the application (async callbacks, chat gap fills).

    Every one has this owner: failures are logged, and :meth:`cancel_all` stops them when
    the client closes, so no task outlives it.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()
        self._logger = logger

    def spawn(self, awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def cancel_all(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:  # close() may be awaited from a callback task
                task.cancel()

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._logger.error("client task failed", exc_info=task.exception())
