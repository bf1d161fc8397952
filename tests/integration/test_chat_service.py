"""The chat service in-process against a real nats-server, with failures injected: a command
whose append was stored but whose answer was lost is stored once (with or without a client frame
id); an undecodable event in a room's log is skipped, not fatal."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from ops.natsd import NatsServer
from ops.streams import ensure_streams
from services.chat import service as service_mod
from services.chat.service import ChatService
from shared import natsio, subjects
from shared.config import load_settings
from shared.eventlog import SKIPPED, decode_logged
from shared.natsio import replay
from shared.schemas.commands import Origin, PostMessage
from shared.schemas.events import ChatMessagePosted
from shared.schemas.wire import encode
from shared.timefmt import now_ms
from tests.conftest import T

pytestmark = pytest.mark.integration

CTX = "room"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    await ensure_streams(conn.jetstream())
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def chat(nc: NATS) -> AsyncIterator[ChatService]:
    svc = ChatService(load_settings({"AG_HEARTBEAT_S": "60"}), nc)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def post(client_id: str | None) -> PostMessage:
    return PostMessage(
        requestId=uuid.uuid4().hex,
        contextId=CTX,
        origin=Origin("gw", "conn", "alice", "Alice"),
        content="hello",
        messageType="text",
        clientId=client_id,
        deadline=now_ms() + int(T(5) * 1000),
    )


async def results_of(nc: NATS) -> asyncio.Queue[dict[str, Any]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_result(msg: Any) -> None:
        await queue.put(json.loads(msg.data))

    await nc.subscribe(subjects.gateway_replies("gw"), cb=on_result)
    return queue


async def stored(nc: NATS) -> list[ChatMessagePosted]:
    out = []
    async for m in replay(nc.jetstream(), subjects.EVENTS_STREAM, subjects.chat_messages(CTX)):
        ev = decode_logged(m.data, 0, m.subject, "test")
        if isinstance(ev, ChatMessagePosted):
            out.append(ev)
    return out


@pytest.mark.parametrize("client_id", [None, "m1"])
async def test_a_command_stored_but_unanswered_is_stored_once(
    chat: ChatService, nc: NATS, monkeypatch: pytest.MonkeyPatch, client_id: str | None
) -> None:
    real = natsio.append_atomic
    calls = 0

    async def lost_answer(*a: Any, **kw: Any) -> int:
        nonlocal calls
        calls += 1
        first = await real(*a, **kw)
        if calls == 1:  # stored, then the answer is lost (a timeout, a crash of the link)
            raise nats.errors.TimeoutError
        return first

    monkeypatch.setattr(service_mod, "append_atomic", lost_answer)
    results = await results_of(nc)
    cmd = post(client_id)
    await nc.jetstream().publish(subjects.chat_commands(CTX), encode(cmd))
    result = await asyncio.wait_for(results.get(), T(10))
    assert result["ok"]["seq"] == 1
    assert [e.seq for e in await stored(nc)] == [1]
    assert calls == 1


async def test_an_undecodable_event_in_a_room_is_skipped_and_the_room_goes_on(
    chat: ChatService, nc: NATS
) -> None:
    results = await results_of(nc)
    js = nc.jetstream()
    await js.publish(subjects.chat_commands(CTX), encode(post("a")))
    assert (await asyncio.wait_for(results.get(), T(10)))["ok"]["seq"] == 1
    before = SKIPPED.labels("chat")._value.get()
    # Garbage on the room's subject: the service's view is now behind (an OCC conflict), and the
    # rebuild that follows must read past it.
    await js.publish(subjects.chat_messages(CTX), b'{"type":"chat.message","seq":"x"}')
    await js.publish(subjects.chat_commands(CTX), encode(post("b")))
    result = await asyncio.wait_for(results.get(), T(10))
    assert result.get("ok", {}).get("seq") == 2, result
    assert [e.seq for e in await stored(nc)] == [1, 2]
    assert SKIPPED.labels("chat")._value.get() > before
