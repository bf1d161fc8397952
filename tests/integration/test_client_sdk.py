"""The Python client SDK against the real stack, chat: nats-server, services and gateway processes.

Every frame the SDK receives in these tests is also checked against its typed frames
(``wire_audit``): a server field the SDK does not model, or a frame type it does not know,
fails the test that saw it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import jwt
import msgspec
import nats
import pytest
from atomic_guide_client import (
    ChatClient,
    State,
)

from shared import subjects
from shared.schemas.commands import HistoryReply, HistoryRequest
from shared.schemas.wire import encode
from tests.conftest import T
from tests.helpers import Stack, http_status, token
from tests.integration.sdk_support import (
    Frames,
    ctx,
    gateway_metrics,
    opts,
    poll,
    tokens,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("wire_audit")]


# --- chat -------------------------------------------------------------------------------------
@pytest.mark.parametrize("auth_mode", ["message", "query"])
async def test_a_message_is_acked_and_reaches_everyone_once(stack: Stack, auth_mode: str) -> None:
    c = ctx()
    url = f"ws://127.0.0.1:{stack.gateways[0][1]}"  # the SDK appends /api/chat/ws
    alice = ChatClient(url, c, tokens("alice", c), **opts(auth_mode=auth_mode))
    bob = ChatClient(url, c, tokens("bob", c), **opts(auth_mode=auth_mode))
    at_alice, at_bob = Frames(alice), Frames(bob)
    async with alice:
        assert alice.info is not None and alice.info.user_id == "alice"
        assert alice.info.context_id == c and alice.info.roles == ["learner"]
        await at_alice.until(lambda: bool(at_alice.of("presence")), 5, "presence")
        assert [u.user_id for u in at_alice.of("presence")[0].data.users] == ["alice"]
        await bob.connect()
        await at_alice.until(lambda: bool(at_alice.of("user_joined")), 5, "bob's join")

        ack = await alice.send_message("hello 👋🏽", message_type="markdown")
        assert ack.seq == 1 and ack.message_id
        await at_bob.until(lambda: bool(at_bob.of("message")), 5, "the message at bob")
        (got,) = at_bob.of("message")
        assert (got.data.id, got.data.seq, got.data.content) == (ack.message_id, 1, "hello 👋🏽")
        assert got.data.message_type == "markdown"
        assert (got.data.author.id, got.data.author.name) == ("alice", "Alice")
        await at_alice.until(lambda: bool(at_alice.of("message")), 5, "alice's own message")

        assert bob.typing(True) is True
        await at_alice.until(lambda: bool(at_alice.of("typing")), 5, "bob typing")
        assert at_alice.of("typing")[0].data.user_id == "bob"

        page = await bob.history(limit=10)
        assert [m.content for m in page.messages] == ["hello 👋🏽"] and page.has_more is False
        second = await bob.send_message("second")
        assert second.seq == 2
        await at_alice.until(lambda: len(at_alice.of("message")) == 2, 5, "the second message")
        assert [m.data.seq for m in at_alice.of("message")] == [1, 2]
        assert alice.last_seq == 2
        await bob.close()
        await at_alice.until(lambda: bool(at_alice.of("user_left")), 5, "bob's leave")


async def test_messages_queued_while_the_gateway_is_down_are_delivered_once_when_it_returns(
    stack: Stack, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="atomic_guide_client")
    c = ctx()
    alice = ChatClient(stack.url(), c, tokens("alice", c), **opts())
    seen = Frames(alice)
    async with alice:
        first_connection = alice.info.connection_id if alice.info else None
        await alice.send_message("before")

        await stack.stop_gateway(0)  # SIGTERM: the gateway closes its sockets with 1001
        assert http_status(stack.http("/healthz")) == 0
        await until(lambda: alice.state is not State.CONNECTED, 10, "alice to notice")
        assert any("after close 1001" in r.getMessage() for r in caplog.records)

        queued = [f"while down {i} ✉️" for i in range(5)]
        sends = [asyncio.create_task(alice.send_message(text)) for text in queued]
        await until(lambda: alice.pending == len(queued), 5, "the sends to be queued")
        assert not any(s.done() for s in sends) and alice.state is not State.CONNECTED

        await stack.restart_gateway(0)  # same port: the client's URL works again
        acks = await asyncio.wait_for(asyncio.gather(*sends), T(30))

        assert alice.info is not None and alice.info.connection_id != first_connection
        assert [a.seq for a in acks] == [2, 3, 4, 5, 6]
        history = await alice.history(limit=100)
        counts = Counter(m.content for m in history.messages)
        assert [m.content for m in history.messages] == ["before", *queued]
        duplicates = sum(n - 1 for n in counts.values())
        assert duplicates == 0 and alice.pending == 0
        # the live frames too: every message once, in order
        await seen.until(lambda: len(seen.of("message")) == 6, 10, "six message frames")
        assert seen.contents() == ["before", *queued]
        with capsys.disabled():
            print(
                f"\n[reconnect] sent while the gateway was down: {len(queued)}, "
                f"delivered after it came back: {len(acks)} (seq {acks[0].seq}-{acks[-1].seq}), "
                f"stored: {sum(counts[q] for q in queued)}, duplicates: {duplicates}"
            )


async def test_a_message_whose_ack_was_lost_with_the_gateway_is_stored_once(
    make_stack: Callable[..., Any],
) -> None:
    """The server applies the message, the gateway dies before the ack goes out; the client
    re-sends it with the same id after reconnecting and gets the original seq back."""
    stack: Stack = await make_stack(env={"AG_COMMAND_TIMEOUT_S": "20"})
    chat = stack.services["chat"]
    assert chat.p is not None
    c = ctx()
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    try:
        alice = ChatClient(stack.url(), c, tokens("alice", c), **opts())
        seen = Frames(alice)
        async with alice:
            await alice.send_message("before")
            commands = (await js.stream_info(subjects.COMMANDS_STREAM)).state.last_seq

            chat.p.send_signal(signal.SIGSTOP)  # the command waits, durably, in the stream
            try:
                send = asyncio.create_task(alice.send_message("in flight"))

                async def published() -> bool:
                    info = await js.stream_info(subjects.COMMANDS_STREAM)
                    return bool(info.state.last_seq > commands)

                await poll(published, 10, "the command in AG_CMDS")
                await stack.stop_gateway(0)
            finally:
                chat.p.send_signal(signal.SIGCONT)
            assert not send.done()

            async def stored() -> bool:
                req = encode(HistoryRequest(c))
                msg = await nc.request(subjects.RPC_CHAT_HISTORY, req, timeout=T(2))
                reply = msgspec.json.decode(msg.data, type=HistoryReply)
                return len(reply.messages) == 2

            await poll(stored, 20, "the chat service to store the message")
            await stack.restart_gateway(0)
            ack = await asyncio.wait_for(send, T(30))

            assert ack.seq == 2
            history = await alice.history()
            assert [(m.seq, m.content) for m in history.messages] == [
                (1, "before"),
                (2, "in flight"),
            ]
            assert history.messages[1].id == ack.message_id
            # delivered once: by recovery (lastSeq=1), not again for the re-sent frame
            await alice.send_message("after")
            await seen.until(lambda: "after" in seen.contents(), 10, "the last message")
            assert seen.contents() == ["before", "in flight", "after"]
    finally:
        await nc.close()


@pytest.mark.parametrize("missed", [3, 12], ids=["replayed", "truncated-then-paged"])
async def test_a_reconnecting_client_sees_every_missed_message_once_in_order(
    make_stack: Callable[..., Any], missed: int
) -> None:
    """AG_RECOVERY_MAX is 5 in tests: 12 missed messages make the server answer
    ``recovered {truncated}`` and the client pages back through ``history`` (5 per page)."""
    stack: Stack = await make_stack(gateways=2)
    c = ctx()
    alice = ChatClient(stack.url(gateway=0), c, tokens("alice", c), history_page_size=5, **opts())
    bob = ChatClient(stack.url(gateway=1), c, tokens("bob", c), **opts())
    seen = Frames(alice)
    async with alice, bob:
        await bob.send_message("m0")
        await seen.until(lambda: seen.contents() == ["m0"], 5, "m0 at alice")

        await stack.stop_gateway(0)
        await until(lambda: alice.state is not State.CONNECTED, 10, "alice to be disconnected")
        for i in range(1, missed + 1):
            await bob.send_message(f"m{i}")
        assert seen.contents() == ["m0"]

        await stack.restart_gateway(0)
        await seen.until(lambda: bool(seen.of("recovered")), 30, "recovery to finish")
        (recovered,) = seen.of("recovered")
        if missed <= 5:
            assert (recovered.data.count, recovered.data.truncated) == (missed, False)
        else:
            assert recovered.data.truncated is True
        expected = [f"m{i}" for i in range(missed + 1)]
        assert seen.contents() == expected
        assert [f.data.seq for f in seen.of("message")] == list(range(1, missed + 2))
        assert alice.last_seq == missed + 1
        # and live again after recovery
        await bob.send_message("live")
        await seen.until(lambda: seen.contents()[-1:] == ["live"], 10, "the live message")
        assert seen.contents() == [*expected, "live"]


async def test_the_token_is_refreshed_before_it_expires_and_the_socket_lives_on(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    c = ctx()
    minted: list[str] = []
    third = asyncio.Event()

    def short_lived() -> str:  # 3-second tokens: connect, then a refresh every ~2.4 s
        minted.append(token("alice", c, ttl=3))
        if len(minted) >= 3:
            third.set()
        return minted[-1]

    caplog.set_level(logging.INFO, logger="atomic_guide_client")
    async with ChatClient(stack.url(), c, short_lived, **opts()) as alice:
        assert alice.info is not None
        connection = alice.info.connection_id
        first_exp = jwt.decode(minted[0], options={"verify_signature": False})["exp"]
        await asyncio.wait_for(third.wait(), T(15))
        # the third token is asked for 80 % into the second one's life: past the first's exp
        assert time.time() > first_exp
        ack = await alice.send_message("still here")
        assert ack.seq == 1
        assert alice.connected and alice.info.connection_id == connection
    metrics = gateway_metrics(stack)
    assert metrics.get('ag_gateway_frames_in_total{endpoint="chat",type="refresh"}', 0) >= 1
    assert 'ag_gateway_closes_total{code="4401"}' not in metrics
    assert not [r for r in caplog.records if "client ended" in r.getMessage()]
    assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]
