"""The gateway's fan-out on the in-memory bus: filters, and chat order kept on the path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest

from shared import subjects
from shared.schemas.events import ChatMessagePosted, encode_event
from shared.schemas.wire import message_frame
from tests.gateway_support import Kit

ROOM = "r"
LIVE, LOG = subjects.chat_live(ROOM), subjects.chat_messages(ROOM)


class Rec:
    def __init__(self, conn_id: str, user_id: str) -> None:
        self.conn_id = conn_id
        self.user_id = user_id
        self.got: list[int | None] = []
        self.texts: list[str] = []
        self.broken: list[str] = []
        self.lazy: list[bool] = []

    def offer(
        self, text: str, seq: int | None, droppable: bool, lazy: bool, headers: Mapping[str, str]
    ) -> None:
        self.got.append(seq)
        self.texts.append(text)
        self.lazy.append(lazy)

    def break_stream(self, reason: str) -> None:
        self.broken.append(reason)


def message(seq: int) -> ChatMessagePosted:
    return ChatMessagePosted(
        contextId=ROOM,
        ts=1,
        messageId=f"m{seq}",
        seq=seq,
        userId="u",
        userName="U",
        content=f"{seq}",
    )


async def log(kit: Kit, seq: int) -> int:
    return (await kit.bus.append(LOG, encode_event(message(seq)), msg_id=f"m{seq}")).seq


async def live(kit: Kit, seq: int, log_seq: int | None = None) -> None:
    headers = {subjects.HDR_SEQ: str(seq)}
    if log_seq is not None:
        headers[subjects.HDR_LOG_SEQ] = str(log_seq)
    await kit.bus.publish(LIVE, message_frame(message(seq)), headers)
    await kit.bus.flush()


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    k = await Kit().start()
    yield k
    await k.stop()


async def test_one_decode_per_frame_and_the_headers_say_who_is_skipped(kit: Kit) -> None:
    a1, a2, b = Rec("c1", "ann"), Rec("c2", "ann"), Rec("c3", "bob")
    for r in (a1, a2, b):
        await kit.fanout.join("ag.live.collab.x.s", r)
    await kit.bus.publish("ag.live.collab.x.s", b'"typing"', {subjects.HDR_EXCEPT_USER: "ann"})
    await kit.bus.publish("ag.live.collab.x.s", b'"edit"', {subjects.HDR_EXCEPT_CONN: "c1"})
    await kit.bus.flush()
    assert a1.texts == [] and a2.texts == ['"edit"'] and b.texts == ['"typing"', '"edit"']
    await kit.fanout.leave("ag.live.collab.x.s", b)
    assert kit.fanout.receivers("ag.live.collab.x.s") == [a1, a2]


async def test_whether_a_frame_may_wait_is_read_once_per_broadcast(kit: Kit) -> None:
    r = Rec("c1", "ann")
    await kit.fanout.join("ag.live.collab.x.s", r)
    await kit.bus.publish("ag.live.collab.x.s", b'"joined"', {subjects.HDR_LAZY: "1"})
    await kit.bus.publish("ag.live.collab.x.s", b'"cursor"', {subjects.HDR_DROPPABLE: "1"})
    await kit.bus.publish("ag.live.collab.x.s", b'"edit"', {})
    await kit.bus.flush()
    assert r.texts == ['"joined"', '"cursor"', '"edit"'] and r.lazy == [True, True, False]


async def test_a_room_starts_where_the_log_stands_and_drops_what_it_handed_out(kit: Kit) -> None:
    first = await log(kit, 1)
    r = Rec("c1", "ann")
    await kit.fanout.join(LIVE, r, LOG)
    await live(kit, 1, first)  # already in the log before the socket joined: not a gap, old
    second = await log(kit, 2)
    await live(kit, 2, second)
    await live(kit, 2, second)  # a re-broadcast: dropped
    assert r.got == [2]


async def test_a_gap_is_filled_from_the_log_before_the_newer_frame(kit: Kit) -> None:
    r = Rec("c1", "ann")
    await kit.fanout.join(LIVE, r, LOG)
    s1 = await log(kit, 1)
    await live(kit, 1, s1)
    await log(kit, 2)  # logged, never broadcast (its publisher crashed)
    await log(kit, 3)
    s4 = await log(kit, 4)
    await live(kit, 4, s4)
    assert r.got == [1, 2, 3, 4]
    assert '"content":"2"' in r.texts[1]  # the same frame the service would have sent


async def test_a_chat_service_start_makes_the_room_look_at_the_log(kit: Kit) -> None:
    r = Rec("c1", "ann")
    await kit.fanout.join(LIVE, r, LOG)
    await log(kit, 1)  # logged, never broadcast, and no newer message comes
    await kit.bus.publish(subjects.CHAT_READY, b"")
    await kit.bus.flush()
    while r.got != [1]:
        await kit.bus.changed(1)  # the resync runs in a task of its own
    assert r.broken == []


async def test_a_gap_the_log_cannot_fill_breaks_the_stream(kit: Kit) -> None:
    r = Rec("c1", "ann")
    await kit.fanout.join(LIVE, r, LOG)
    s1 = await log(kit, 1)
    await live(kit, 1, s1)
    await live(kit, 3, 99)  # seq 2 is nowhere in the log
    assert r.got == [1] and r.broken and "lastSeq" in r.broken[0]


async def test_joins_and_leaves_racing_keep_the_room_subscribed_while_anyone_is_in_it(
    kit: Kit,
) -> None:
    """Joins of a room already subscribed take no lock; a join racing the last member's leave
    (which unsubscribes) still ends subscribed, and a burst of joins all receive."""
    first = Rec("c0", "u0")
    await kit.fanout.join(LIVE, first, LOG)
    burst = [Rec(f"c{i}", f"u{i}") for i in range(1, 50)]
    late = Rec("late", "late")
    await asyncio.gather(
        *(kit.fanout.join(LIVE, r, LOG) for r in burst[:25]),
        kit.fanout.leave(LIVE, first),
        *(kit.fanout.join(LIVE, r, LOG) for r in burst[25:]),
    )
    await live(kit, 1, await log(kit, 1))
    assert all(r.got == [1] for r in burst) and first.got == []
    for r in burst[1:]:
        await kit.fanout.leave(LIVE, r)
    # the last member leaves (unsubscribing) while a new one joins
    await asyncio.gather(kit.fanout.leave(LIVE, burst[0]), kit.fanout.join(LIVE, late, LOG))
    await live(kit, 2, await log(kit, 2))
    assert late.got == [2]
    assert kit.fanout.receivers(LIVE) == [late]
    assert kit.fanout.subjects == 1
