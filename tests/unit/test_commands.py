"""The gateway's command client: results by request id, refusals, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from shared import subjects
from shared.errors import RateLimited, ServiceUnavailable
from shared.schemas.commands import CommandResult, Origin, PostMessage
from shared.schemas.wire import encode
from tests.gateway_support import Kit


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    k = await Kit().start()
    yield k
    await k.stop()


def post(kit: Kit) -> tuple[PostMessage, object]:
    ticket = kit.commands.ticket()
    cmd = PostMessage(
        requestId=ticket.request_id,
        contextId="r",
        origin=Origin(ticket.gateway_id, "conn", "ann", "Ann"),
        content="hi",
        messageType="text",
        clientId="m1",
        deadline=ticket.deadline,
    )
    return cmd, ticket


async def serve(kit: Kit, answer: CommandResult | None) -> asyncio.Task[None]:
    """A service that takes one command and answers it (or not: None)."""
    queue = kit.bus.commands("ag.cmd.chat.>", "test")

    async def run() -> None:
        got = await queue.fetch(1, 5)
        cmd = msgspec.json.decode(got[0].data, type=PostMessage)
        if answer is not None:
            result = msgspec.structs.replace(answer, requestId=cmd.requestId)
            await kit.bus.publish(subjects.gateway_replies(cmd.origin.gatewayId), encode(result))
        await got[0].ack()

    return asyncio.create_task(run())


async def test_a_call_returns_the_services_ok_result(kit: Kit) -> None:
    cmd, ticket = post(kit)
    task = await serve(kit, CommandResult("?", "conn", "m1", ok={"messageId": "x", "seq": 3}))
    ok = await kit.commands.call("ag.cmd.chat.r", ticket, cmd, "chat_message")  # type: ignore[arg-type]
    assert ok == {"messageId": "x", "seq": 3}
    await task


async def test_a_refusal_comes_back_as_its_typed_error(kit: Kit) -> None:
    cmd, ticket = post(kit)
    task = await serve(kit, CommandResult("?", "conn", "m1", error="rate_limited", message="slow"))
    with pytest.raises(RateLimited) as info:
        await kit.commands.call("ag.cmd.chat.r", ticket, cmd, "chat_message")  # type: ignore[arg-type]
    assert info.value.code == "rate_limited" and info.value.message == "slow"
    await task


async def test_no_answer_by_the_deadline_is_unavailable(kit: Kit) -> None:
    cmd, ticket = post(kit)
    task = await serve(kit, None)
    with pytest.raises(ServiceUnavailable) as info:
        await kit.commands.call("ag.cmd.chat.r", ticket, cmd, "chat_message")  # type: ignore[arg-type]
    assert "chat service is unavailable" in info.value.message
    await task
