"""The coalescing flusher's queue: a wake-up taken by a flusher that is then cancelled (a
reconnect replaces it) is not lost; nats-py's own queue would still hold it."""

from __future__ import annotations

import asyncio

from shared.bus.nats_flush import FLUSH_TURNS, _Lingering


async def test_a_wake_up_taken_by_a_cancelled_flusher_goes_back() -> None:
    queue = _Lingering(maxsize=4)
    wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    queue.put_nowait(wake)
    flusher = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # the flusher has taken it and lingers
    assert queue.empty() and not flusher.done()
    flusher.cancel()
    await asyncio.gather(flusher, return_exceptions=True)
    assert flusher.cancelled()
    assert queue.get_nowait() is wake and not wake.done()  # the next flusher resolves it


async def test_a_wake_up_is_handed_over_after_the_linger() -> None:
    queue = _Lingering()
    queue.put_nowait("wake")
    getter = asyncio.create_task(queue.get())
    for _ in range(FLUSH_TURNS):
        await asyncio.sleep(0)
        assert not getter.done()
    assert await getter == "wake"
