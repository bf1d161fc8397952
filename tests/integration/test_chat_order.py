"""Every socket gets a room's messages in seq order, each once, without a gap, whatever the
chat service did between its append and its broadcast (docs/protocol.md, Chat)."""

from __future__ import annotations

import signal
import uuid
from typing import Any

import nats
import pytest

from shared import subjects
from shared.schemas.events import ChatMessagePosted, encode_event
from shared.schemas.wire import message_frame
from shared.timefmt import now_ms
from tests.helpers import Client, Stack, token, wait_chat_ready

pytestmark = pytest.mark.integration

ROOM = "order-room"


async def joined(stack: Stack, user: str) -> Client:
    c = await Client.connect(stack.url(token=token(user, ROOM), contextId=ROOM))
    await c.expect("connected")
    return c


async def send(c: Client, i: str) -> int:
    ack = await c.request({"type": "message", "id": i, "data": {"content": i}}, "ack")
    return int(ack["data"]["seq"])


async def log_behind_the_service(nats_url: str, seq: int) -> None:
    """Append message ``seq`` as a chat service that crashed right after its append would have
    left it: in the log, never broadcast."""
    ev = ChatMessagePosted(
        contextId=ROOM,
        ts=now_ms(),
        messageId=uuid.uuid4().hex,
        seq=seq,
        userId="ghost",
        userName="Ghost",
        content=f"logged only {seq}",
    )
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(subjects.chat_messages(ROOM), encode_event(ev))
    finally:
        await nc.close()


async def seqs(c: Client, count: int) -> list[int]:
    return [(await c.expect("message", timeout=10))["data"]["seq"] for _ in range(count)]


async def test_a_message_logged_but_not_broadcast_arrives_before_newer_ones(stack: Stack) -> None:
    alice, bob = await joined(stack, "alice"), await joined(stack, "bob")
    assert await send(alice, "m1") == 1
    assert await seqs(bob, 1) == [1]
    await log_behind_the_service(stack.nats_url, 2)
    assert await send(alice, "m3") == 3  # the service finds 2 in the log and goes on
    got = [(await bob.expect("message", timeout=10))["data"] for _ in range(2)]
    assert [m["seq"] for m in got] == [2, 3]
    assert got[0]["content"] == "logged only 2"  # the same frame the service would have sent
    assert [(await alice.expect("message"))["data"]["seq"] for _ in range(3)] == [1, 2, 3]


async def test_a_restarted_chat_service_gets_the_unbroadcast_tail_out_at_once(
    stack: Stack,
) -> None:
    bob = await joined(stack, "bob")
    alice = await joined(stack, "alice")
    assert await send(alice, "m1") == 1
    assert await seqs(bob, 1) == [1]
    await log_behind_the_service(stack.nats_url, 2)
    chat = stack.services["chat"]
    chat.stop(signal.SIGKILL)
    chat.start()
    await wait_chat_ready(stack.nats_url)
    # No newer message reveals the gap: the new service's start makes the gateway look.
    assert await seqs(bob, 1) == [2]


async def test_a_frame_seen_before_is_not_delivered_again(stack: Stack) -> None:
    bob = await joined(stack, "bob")
    alice = await joined(stack, "alice")
    for i in (1, 2):
        assert await send(alice, f"m{i}") == i
    assert await seqs(bob, 2) == [1, 2]
    nc = await nats.connect(stack.nats_url)
    try:
        hist = await alice.request({"type": "history", "id": "h", "data": {}}, "history")
        first: dict[str, Any] = hist["data"]["messages"][0]
        again = ChatMessagePosted(
            contextId=ROOM,
            ts=now_ms(),
            messageId=first["id"],
            seq=1,
            userId="alice",
            userName="Alice",
            content=first["content"],
        )
        # A re-broadcast (two services during a restart, say): the gateway drops it.
        await nc.publish(
            subjects.chat_live(ROOM), message_frame(again), headers={subjects.HDR_SEQ: "1"}
        )
        await nc.flush()
    finally:
        await nc.close()
    assert await send(alice, "m3") == 3
    assert await seqs(bob, 1) == [3]
