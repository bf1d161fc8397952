"""The connection core against a scripted server (real websockets, 127.0.0.1:0)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable

import pytest
from fake_server import FakeServer, Peer, running, timeout, token

from atomic_guide_client import (
    AuthError,
    Backoff,
    ChatClient,
    ConnectionClosed,
    ForbiddenError,
    FrameTooLargeError,
    QueueFull,
    ReconnectFailed,
    ServerError,
    State,
    UnknownFrame,
)
from atomic_guide_client._dispatch import Frame
from atomic_guide_client.frames import MessageRequest, TypingRequest
from atomic_guide_client.payloads import MessagePayload, TypingPayload


def chat(server: FakeServer, backoff: Backoff, **options: object) -> ChatClient:
    return ChatClient(server.url, "ctx-1", token(), backoff=backoff, **options)  # type: ignore[arg-type]


async def connected(client: ChatClient, server: FakeServer) -> Peer:
    await asyncio.wait_for(client.connect(), timeout())
    return await server.next_peer()


async def test_message_auth_sends_a_first_auth_frame_with_token_and_context(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    tok = token()
    client = ChatClient(server.url, "ctx-1", tok, backoff=fast_backoff)
    info = await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()
    assert peer.auth == {"type": "auth", "token": tok, "contextId": "ctx-1"}
    # the token stays out of the URL; batched delivery is always asked for
    assert peer.ws.request is not None and peer.ws.request.path == "/api/chat/ws?batch=1"
    assert info.user_id == "u1" and client.state is State.CONNECTED
    await client.close()


async def test_query_auth_puts_token_and_context_in_the_url(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    tok = token()
    client = ChatClient(server.url, "ctx 1", lambda: tok, auth_mode="query", backoff=fast_backoff)
    peer = await connected(client, server)
    assert peer.auth is None
    assert peer.query == {"batch": "1", "token": tok, "contextId": "ctx 1"}
    await client.close()


async def test_async_token_providers_are_awaited(server: FakeServer, fast_backoff: Backoff) -> None:
    async def provider() -> str:
        await asyncio.sleep(0)
        return "async-token"

    client = ChatClient(server.url, "ctx-1", provider, backoff=fast_backoff)
    peer = await connected(client, server)
    assert peer.token == "async-token"
    await client.close()


async def test_replies_are_correlated_by_id_even_out_of_order(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    peer = await connected(client, server)
    first = client.send(MessageRequest(data=MessagePayload(content="one")))
    second = client.send(MessageRequest(data=MessagePayload(content="two")))
    f1, f2 = await peer.recv_type("message"), await peer.recv_type("message")
    assert f1["data"] == {"content": "one"} and f1["id"] != f2["id"]
    await peer.send("ack", {"messageId": "m2", "seq": 2}, id=f2["id"])
    await peer.send("ack", {"messageId": "m1", "seq": 1}, id=f1["id"])
    assert await asyncio.wait_for(first, timeout()) == {"messageId": "m1", "seq": 1}
    assert await asyncio.wait_for(second, timeout()) == {"messageId": "m2", "seq": 2}
    assert client.pending == 0
    await client.close()


async def test_an_error_reply_raises_server_error_for_that_request_only(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    peer = await connected(client, server)
    bad = asyncio.ensure_future(client.send_message(""))
    frame = await peer.recv_type("message")
    await peer.send("error", {"code": "invalid_message"}, id=frame["id"], error="content empty")
    with pytest.raises(ServerError) as info:
        await asyncio.wait_for(bad, timeout())
    assert (info.value.code, info.value.message) == ("invalid_message", "content empty")
    assert client.connected
    await client.close()


async def test_unavailable_is_retried_with_the_same_id(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    peer = await connected(client, server)
    sent = asyncio.ensure_future(client.send_message("hi"))
    first = await peer.recv_type("message")
    await peer.send("error", {"code": "unavailable"}, id=first["id"])
    again = await peer.recv_type("message")
    assert again == first
    await peer.send("ack", {"messageId": "m", "seq": 1}, id=first["id"])
    ack = await asyncio.wait_for(sent, timeout())
    assert ack.seq == 1
    await client.close()


async def test_after_a_1001_close_queued_requests_are_resent_with_the_same_id(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    peer = await connected(client, server)
    sent = asyncio.ensure_future(client.send_message("survives"))
    original = await peer.recv_type("message")
    await peer.close(1001, "draining")
    peer2 = await server.next_peer()
    resent = await peer2.recv_type("message")
    assert resent["id"] == original["id"] and resent["data"] == original["data"]
    await peer2.send("ack", {"messageId": "m1", "seq": 1}, id=resent["id"])
    assert (await asyncio.wait_for(sent, timeout())).message_id == "m1"
    await client.close()


async def test_requests_made_while_disconnected_wait_for_the_connection(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    queued = client.send(MessageRequest(data=MessagePayload(content="early")))
    peer = await connected(client, server)
    frame = await peer.recv_type("message")
    await peer.send("ack", {"messageId": "m", "seq": 1}, id=frame["id"])
    assert await asyncio.wait_for(queued, timeout()) == {"messageId": "m", "seq": 1}
    await client.close()


async def test_send_raises_queue_full_past_max_pending_and_drops_nothing(
    fast_backoff: Backoff,
) -> None:
    client = ChatClient("ws://127.0.0.1:9", "ctx", "t", max_pending=2, backoff=fast_backoff)
    kept = [client.send(MessageRequest(data=MessagePayload(content=str(i)))) for i in range(2)]
    with pytest.raises(QueueFull):
        client.send(MessageRequest(data=MessagePayload(content="overflow")))
    assert client.pending == 2
    await client.close()
    for future in kept:
        with pytest.raises(ConnectionClosed):
            await future


async def test_fire_and_forget_frames_are_dropped_while_disconnected(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    assert client.typing(True) is False
    with pytest.raises(TypeError):
        client.send(TypingRequest(data=TypingPayload(is_typing=True)))
    peer = await connected(client, server)
    assert client.typing(True) is True
    frame = await peer.recv_type("typing")
    assert frame == {"type": "typing", "data": {"isTyping": True}}  # no id: never queued
    await client.close()


@pytest.mark.parametrize(
    ("code", "error"), [(4401, AuthError), (4403, ForbiddenError), (1009, FrameTooLargeError)]
)
async def test_terminal_close_codes_end_the_client_without_reconnecting(
    server: FakeServer, fast_backoff: Backoff, code: int, error: type[ConnectionClosed]
) -> None:
    client = chat(server, fast_backoff)
    peer = await connected(client, server)
    pending = client.send(MessageRequest(data=MessagePayload(content="x")))
    await peer.recv_type("message")
    await peer.send("error", {"code": "token_expired"}, error="token expired")
    await peer.close(code, "no")
    with pytest.raises(error):
        await asyncio.wait_for(client.wait_closed(), timeout())
    assert client.state is State.CLOSED and server.accepted == 1
    with pytest.raises(error):
        await pending
    frames = []
    with pytest.raises(error):
        async for frame in client:  # what arrived is still delivered, then the error
            frames.append(frame.type)
    assert frames == ["connected", "error"]


async def test_a_4401_before_connected_fails_connect_with_auth_error(
    fast_backoff: Backoff,
) -> None:
    fake = FakeServer(auto_connect=False)
    async with running(fake):
        client = ChatClient(fake.url, "ctx", "bad-token", backoff=fast_backoff)
        attempt = asyncio.ensure_future(client.connect())
        peer = await fake.next_peer()
        assert (await peer.recv_type("auth"))["token"] == "bad-token"
        await peer.close(4401, "invalid token")
        with pytest.raises(AuthError):
            await asyncio.wait_for(attempt, timeout())
        assert fake.accepted == 1


async def test_http_refusals_at_the_handshake_are_retried_not_fatal(
    fast_backoff: Backoff,
) -> None:
    # Auth is in-band (4401/4403 closes); a draining gateway refuses upgrades with 403.
    refused: list[int] = []

    def refuse_twice(connection: object, request: object) -> object:
        if len(refused) < 2:
            refused.append(403 if not refused else 401)
            return connection.respond(refused[-1], "draining\n")  # type: ignore[attr-defined]
        return None

    async with running(FakeServer(), process_request=refuse_twice) as fake:
        client = ChatClient(fake.url, "ctx", token(), backoff=fast_backoff)
        info = await asyncio.wait_for(client.connect(), timeout())
        assert info.user_id == "u1" and refused == [403, 401]
        await client.close()


async def test_reconnect_gives_up_after_max_attempts(server: FakeServer) -> None:
    backoff = Backoff(base=0.001, cap=0.002, max_attempts=2)
    client = ChatClient(server.url, "ctx", token(), backoff=backoff)
    peer = await connected(client, server)
    server.auto_connect = False  # later sockets never get `connected`
    await peer.close(1011, "boom")
    for _retry in range(2):
        await (await server.next_peer()).close(4408, "no auth in time")
    with pytest.raises(ReconnectFailed):
        await asyncio.wait_for(client.wait_closed(), timeout())
    assert server.accepted == 3


async def test_a_silent_server_is_detected_by_the_heartbeat_and_replaced(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    server.answer_pings = False
    client = chat(server, fast_backoff, ping_interval=0.05, ping_timeout=0.1)
    peer = await connected(client, server)
    server.answer_pings = True
    await server.next_peer()  # the replacement socket
    await peer.wait_closed()  # the client dropped the silent one itself
    assert peer.pings >= 1  # it pinged before giving up
    assert (await asyncio.wait_for(client.connect(), timeout())).user_id == "u1"
    await client.close()


async def test_pings_are_sent_every_interval_and_pongs_keep_the_socket(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff, ping_interval=0.02, ping_timeout=timeout(0.5))
    peer = await connected(client, server)
    await peer.wait_for_pings(5)
    assert server.accepted == 1 and client.connected
    await client.close()


async def test_refresh_is_sent_before_the_token_expires(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    issued: list[str] = []

    def provider() -> str:
        issued.append(token(lifetime=2.0 + len(issued)))
        return issued[-1]

    client = ChatClient(server.url, "ctx", provider, refresh_margin=1.9, backoff=fast_backoff)
    peer = await connected(client, server)
    started = time.monotonic()
    refresh = await peer.recv_type("refresh")
    assert time.monotonic() - started < timeout(1.9)  # before exp
    assert refresh["token"] == issued[1] and refresh["id"]
    await peer.send("refreshed", {"expiresAt": "later"}, id=refresh["id"])
    assert peer.token == issued[0]
    await client.close()


async def test_a_refused_refresh_is_retried_and_the_connection_stays(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    counter = iter(range(100))
    client = ChatClient(
        server.url,
        "ctx",
        lambda: token(lifetime=1.0 + next(counter)),
        refresh_margin=0.99,
        backoff=fast_backoff,
    )
    peer = await connected(client, server)
    refresh = await peer.recv_type("refresh")
    await peer.send("error", {"code": "forbidden"}, id=refresh["id"], error="other sub")
    assert client.connected
    await client.close()


async def test_close_sends_1000_and_fails_pending_requests(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    peer = await connected(client, server)
    pending = client.send(MessageRequest(data=MessagePayload(content="x")))
    await peer.recv_type("message")
    await client.close()
    await peer.wait_closed()
    assert peer.close_code == 1000
    with pytest.raises(ConnectionClosed) as info:
        await pending
    assert info.value.code == 1000
    await client.wait_closed()  # a clean close does not raise
    assert [frame.type async for frame in client] == ["connected"]
    with pytest.raises(ConnectionClosed):
        client.send(MessageRequest(data=MessagePayload(content="late")))


async def test_callbacks_get_frames_by_type_and_async_ones_may_await_replies(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff, max_inbox=0)
    seen: list[str] = []
    acked = asyncio.Event()

    async def reply_to_presence(frame: object) -> None:
        await client.send_message("hello room")  # awaits an ack the reader delivers
        acked.set()

    client.on("*", lambda frame: seen.append(frame.type))
    client.on("presence", reply_to_presence)
    peer = await connected(client, server)
    await peer.send("presence", {"users": [{"userId": "u1", "username": "Ada"}]})
    frame = await peer.recv_type("message")
    await peer.send("ack", {"messageId": "m", "seq": 1}, id=frame["id"])
    await asyncio.wait_for(acked.wait(), timeout())
    assert seen == ["connected", "presence"]  # the ack went to the future, not callbacks
    with pytest.raises(RuntimeError):
        await client.__anext__()  # iteration disabled with max_inbox=0
    await client.close()


async def test_unknown_frames_reach_the_application_and_garbage_is_skipped(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    peer = await connected(client, server)
    await peer.send_raw("{not json")
    await peer.send("poll_started", {"question": "?"})
    frames = []
    async with asyncio.timeout(timeout()):
        async for frame in client:
            frames.append(frame)
            if len(frames) == 2:
                break
    assert isinstance(frames[1], UnknownFrame) and frames[1].data == {"question": "?"}
    await client.close()


async def test_the_context_manager_connects_and_closes(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    async with chat(server, fast_backoff) as client:
        assert client.connected
    assert client.state is State.CLOSED


async def test_pacing_holds_frames_past_the_rate_but_never_the_pings(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(
        server, fast_backoff, frames_per_minute=2, ping_interval=0.02, ping_timeout=timeout(1.0)
    )
    peer = await connected(client, server)
    for text in ("a", "b", "c"):
        client.send(MessageRequest(data=MessagePayload(content=text)))
    assert [(await peer.recv_type("message"))["data"]["content"] for _ in range(2)] == ["a", "b"]
    pings_before = peer.pings
    await peer.wait_for_pings(pings_before + 3)  # pings keep flowing while "c" waits
    assert peer.frames.empty() and client.pending == 3 and client.connected
    await client.close()


async def test_a_bug_handling_one_frame_is_logged_and_the_client_carries_on(
    server: FakeServer, fast_backoff: Backoff, caplog: pytest.LogCaptureFixture
) -> None:
    class BuggyChat(ChatClient):
        def _on_frame(self, frame: Frame) -> Iterable[Frame]:
            if frame.type == "user_joined":
                raise ZeroDivisionError("bug in a client hook")
            return super()._on_frame(frame)

    def buggy(frame: object) -> None:
        raise KeyError("bug in application code")

    client = BuggyChat(server.url, "ctx", token(), backoff=fast_backoff)
    client.on("presence", buggy)  # callbacks are isolated...
    peer = await connected(client, server)
    await peer.send("presence", {"users": []})
    await peer.send("user_joined", {"userId": "u2"})  # ...and so is frame handling
    await peer.send("user_left", {"userId": "u2"})
    kinds = []
    async with asyncio.timeout(timeout()):
        async for frame in client:
            kinds.append(frame.type)
            if frame.type == "user_left":
                break
    assert kinds == ["connected", "presence", "user_left"]
    assert client.connected and server.accepted == 1
    assert "failed to handle a 'user_joined' frame" in caplog.text
    await client.close()


async def test_close_may_be_awaited_from_an_async_callback(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = chat(server, fast_backoff)
    closed_inside = asyncio.Event()

    async def close_on_message(frame: object) -> None:
        await client.close()
        closed_inside.set()

    client.on("user_left", close_on_message)
    peer = await connected(client, server)
    await peer.send("user_left", {"userId": "u2"})
    await asyncio.wait_for(closed_inside.wait(), timeout())
    await peer.wait_closed()
    assert client.state is State.CLOSED and peer.close_code == 1000


async def test_a_batched_message_is_handled_frame_by_frame_in_order(
    fast_backoff: Backoff,
) -> None:
    """``batch=1``: one WebSocket message may hold several frames as a JSON array, even the
    ``connected`` frame and what follows it."""
    async with running(FakeServer(auto_connect=False)) as server:
        client = ChatClient(server.url, "ctx-1", token(), auth_mode="query", backoff=fast_backoff)
        seen: list[str] = []
        five = asyncio.Event()

        def record(frame: Frame) -> None:
            seen.append(frame.type)
            if len(seen) == 5:
                five.set()

        client.on("*", record)
        connecting = asyncio.create_task(client.connect())
        peer = await server.next_peer()
        stamp = '"timestamp":"2026-01-05T09:30:00.123Z"'
        connected = (
            '{"type":"connected",'
            + stamp
            + ',"data":'
            + json.dumps(server.connected_data(peer))
            + "}"
        )
        extra = ",".join(f'{{"type":"later_{i}",{stamp},"data":{{}}}}' for i in range(3))
        await peer.send_raw(f"[{connected},{extra}]")
        await asyncio.wait_for(connecting, timeout())
        await peer.send_raw(f'[{{"type":"later_3",{stamp},"data":{{}}}}]')
        await asyncio.wait_for(five.wait(), timeout())
        assert seen == ["connected", "later_0", "later_1", "later_2", "later_3"]
        await client.close()
