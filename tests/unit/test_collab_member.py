"""The gateway's per-session gate (sans-I/O): holds around replies, version floor, ack ordering."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.gateway.collab_member import Member


class FakeConn:
    id = "conn-1"
    identity = None
    context_id = "ctx"

    def __init__(self) -> None:
        self.out: list[str] = []
        self.closed: int | None = None

    def push(self, text: str, droppable: bool = False, seq: int | None = None) -> None:
        self.out.append(text)

    def close(self, code: int, reason: str = "") -> None:
        self.closed = code


def member(limit: int = 10) -> tuple[Member, FakeConn]:
    conn = FakeConn()
    m = Member(conn, "s", "participant", limit)  # type: ignore[arg-type]
    return m, conn


def test_frames_pass_through_when_nothing_is_held() -> None:
    m, conn = member()
    m.offer("e1", 1, False)
    m.offer("cursor", None, True)
    assert conn.out == ["e1", "cursor"] and m.seen == 1


def test_a_reply_holds_frames_and_releases_only_those_after_its_version() -> None:
    m, conn = member()
    m.hold()
    for v in (3, 4, 5):
        m.offer(f"e{v}", v, False)
    m.offer("cursor", None, True)
    assert conn.out == []
    m.floor = 4  # the snapshot/join reply showed version 4
    m.offer("e4-late", 4, False)  # at or below the floor: already in the reply
    m.release()
    assert conn.out == ["e5", "cursor"]
    m.offer("e6", 6, False)
    assert conn.out[-1] == "e6"


def test_holds_nest_and_a_left_member_gets_nothing() -> None:
    m, conn = member()
    m.hold()
    m.hold()
    m.offer("e1", 1, False)
    m.release()
    assert conn.out == []
    m.gone = True
    m.release()
    assert conn.out == []


def test_held_overflow_drops_droppable_frames_and_closes_for_the_rest() -> None:
    m, conn = member(limit=1)
    m.hold()
    m.offer("e1", 1, False)
    m.offer("cursor", None, True)
    assert conn.closed is None
    m.offer("e2", 2, False)
    assert conn.closed == 1013


async def test_an_ack_waits_until_the_edits_before_it_were_handed_over() -> None:
    m, conn = member()
    waiter: asyncio.Task[Any] = asyncio.create_task(m.caught_up(2, timeout=5))
    await asyncio.sleep(0)
    m.offer("e1", 1, False)
    await asyncio.sleep(0)
    assert not waiter.done()
    m.offer("e2", 2, False)
    assert await waiter is True
    assert await m.caught_up(2, timeout=0) is True
    assert await m.caught_up(3, timeout=0.01) is False  # bounded: never stalls a reply for long


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
