"""A collaboration session member: acks wait for the edits before them (bounded)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.gateway.collab_member import Member
from tests.gateway_support import Socket


async def test_an_ack_waits_until_the_edits_before_it_were_handed_over() -> None:
    socket = Socket("collaboration")
    m = Member(socket.open("alice", "ctx"), "s", "participant", 10)
    waiter: asyncio.Task[Any] = asyncio.create_task(m.caught_up(2, timeout=5))
    m.offer("e1", 1, False, False, {})
    assert not waiter.done()
    m.offer("e2", 2, False, False, {})
    assert await waiter is True
    assert await m.caught_up(2, timeout=0) is True
    assert await m.caught_up(3, timeout=0.01) is False  # bounded: never stalls a reply for long
    assert m.ref().sessionId == "s" and m.ref().userId == "alice"
    await socket.stop()


async def test_a_reply_that_swallowed_its_cancellation_still_ends_cancelled() -> None:
    from services.gateway.collaboration import _keep_cancellation

    started = asyncio.Event()

    async def swallowing() -> str:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # as Python 3.11's wait_for does when its future completes at that moment
        return "late"

    task = asyncio.ensure_future(_keep_cancellation(swallowing()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
