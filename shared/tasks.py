"""Stopping background tasks reliably.

On Python 3.11 ``asyncio.wait_for`` (used inside nats-py, e.g. by a pull consumer's fetch) can
swallow a cancellation that lands as its inner future completes: the task then runs on as if
nothing happened, and a plain ``task.cancel(); await task`` waits forever. ``stop`` cancels
again until the task has really ended (bounded, and said in the log if it never does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from shared.logs import get_logger

__all__ = ["stop"]

log = get_logger(__name__)


async def stop(tasks: Iterable[asyncio.Task[object] | None], timeout: float = 5.0) -> None:
    pending = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for t in pending:
            t.cancel()
        done, pending = await asyncio.wait(pending, timeout=0.2)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                log.warning("task ended with an error", extra={"task": t.get_name()})
        if pending and loop.time() > deadline:
            log.error("tasks would not stop", extra={"tasks": [t.get_name() for t in pending]})
            return
