"""One connection's lifecycle and outbound side: ordered replies, bounded queue, close."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.connection import ConnState, Reply, StateError
from shared.auth import Identity
from tests.gateway_support import Socket


async def test_the_lifecycle_opens_once_and_closes_after_what_is_queued() -> None:
    s = Socket("chat")
    assert s.conn.state is ConnState.AUTHENTICATING and s.conn.authed is None
    assert not s.conn.closed
    authed = s.open("ann", "c1")
    assert not s.conn.closed
    assert s.conn.state is ConnState.OPEN and authed.user_id == "ann" and s.conn.context_id == "c1"
    with pytest.raises(StateError):
        s.conn.open(Identity("bob", "Bob", frozenset({"c1"}), ("learner",), 1e12), "c1")
    authed.push('"first"')
    authed.close(4403, "x" * 200)  # a reason longer than a close frame allows is cut
    assert s.conn.state is ConnState.CLOSING and s.conn.closed
    authed.push('"after close"')  # dropped
    await s.conn.flushed()
    assert s.sent.get_nowait() == "first" and s.sent.empty()
    assert s.closed is not None and s.closed[0] == 4403 and len(s.closed[1].encode()) <= 123
    await s.stop()
    assert s.conn.state is ConnState.CLOSED and s.conn.closed


async def test_replies_go_out_in_frame_order_whenever_their_work_finishes() -> None:
    s = Socket("chat")
    authed = s.open("ann", "c1")
    slow: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    released: list[str] = []
    await authed.reply(slow)  # frame 1: its backend answers late
    await authed.reply(Reply('{"n":2}', lambda: released.append("after 2")))  # frame 2: at once
    await authed.reply(None)  # frame 3: no reply (typing)
    await authed.reply('{"n":4}')
    assert s.sent.empty() and released == []
    slow.set_result('{"n":1}')
    assert [await s.next() for _ in range(3)] == [{"n": 1}, {"n": 2}, {"n": 4}]
    assert released == ["after 2"]
    await s.stop()


async def test_a_full_queue_drops_droppable_frames_and_closes_for_the_rest() -> None:
    s = Socket("chat", queue=2)
    authed = s.open("ann", "c1")
    # nothing is written while this test holds the loop: the queue fills
    authed.push('{"n":1}')
    authed.push('{"n":2}')
    authed.push('{"typing":1}', droppable=True)
    assert not s.conn.closed
    authed.push('{"n":3}')
    assert s.conn.closed and s.conn.close_code == 1013
    await s.stop()


async def test_a_failing_reply_is_logged_and_the_next_ones_still_go_out() -> None:
    s = Socket("chat")
    authed = s.open("ann", "c1")

    async def broken() -> str:
        raise RuntimeError("bug")

    await authed.reply(broken())
    await authed.reply('{"n":2}')
    assert await s.next() == {"n": 2}
    await s.stop()


async def test_a_closed_sockets_members_go_without_the_collector() -> None:
    """A member's gate calls the socket, not the member: no reference cycle, so a closed
    socket's members are freed by reference counting."""
    import gc

    from services.gateway.chat import ChatMember
    from services.gateway.collab_member import Member

    sock = Socket("chat")
    authed = sock.open("ann", "c1")
    members: list[object] = [ChatMember(authed, 8), Member(authed, "s1", "participant", 8)]
    await sock.stop()
    sock.conn.authed = None  # what the session does once the socket is gone
    gc.collect()
    gc.disable()
    try:
        watched = {id(o): type(o) for o in members}  # (this Socket's send refers to itself)
        del members, authed, sock
        left = [o for o in gc.get_objects() if watched.get(id(o)) is type(o)]
        assert left == []
    finally:
        gc.enable()
