"""The chat endpoint end to end: real nats-server, chat service, gateway, WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.helpers import Client, Stack, T, token

pytestmark = pytest.mark.integration


def ctx() -> str:
    return "course-" + uuid.uuid4().hex[:8]


async def join(stack: Stack, user: str, context: str, gateway: int = 0, **q: object) -> Client:
    c = await Client.connect(
        stack.url(gateway=gateway, token=token(user, context), contextId=context, **q)
    )
    await c.expect("connected")
    return c


async def test_query_auth_sends_connected_then_presence_with_self(stack: Stack) -> None:
    c = ctx()
    alice = await Client.connect(stack.url(token=token("alice", c), contextId=c))
    connected = await alice.recv()
    assert connected["type"] == "connected"
    data = connected["data"]
    assert data["userId"] == "alice" and data["username"] == "Alice" and data["contextId"] == c
    assert data["roles"] == ["learner"] and data["serverTime"].endswith("Z")
    assert len(connected["timestamp"]) == len("2026-01-05T09:30:00.123Z")
    presence = await alice.recv()
    assert presence["type"] == "presence"
    assert presence["data"]["users"] == [{"userId": "alice", "username": "Alice"}]


async def test_first_frame_auth_accepts_data_form_and_refuses_other_frames_before(
    stack: Stack,
) -> None:
    c = ctx()
    ws = await Client.connect(stack.url())
    pong = await ws.request({"type": "ping", "id": "p0"}, "pong")
    assert pong["data"] == {}
    err = await ws.request({"type": "message", "id": "m0", "data": {"content": "hi"}}, "error")
    assert err["data"]["code"] == "unauthenticated"
    await ws.send({"type": "auth", "data": {"token": token("bob", c), "contextId": c}})
    assert (await ws.expect("connected"))["data"]["userId"] == "bob"
    again = await ws.request(
        {"type": "auth", "id": "a2", "token": token("bob", c), "contextId": c}, "error"
    )
    assert again["data"]["code"] == "invalid_message"


async def test_message_is_broadcast_to_room_and_acked_to_sender_with_increasing_seq(
    stack: Stack,
) -> None:
    c = ctx()
    alice, bob = await join(stack, "alice", c), await join(stack, "bob", c)
    ack = await bob.request({"type": "message", "id": "m1", "data": {"content": "hello"}}, "ack")
    assert ack["data"]["seq"] == 1 and ack["data"]["messageId"]
    got = await alice.expect("message")
    assert got["data"]["content"] == "hello" and got["data"]["seq"] == 1
    assert got["data"]["author"] == {"id": "bob", "name": "Bob"}
    assert got["data"]["messageType"] == "text" and got["data"]["id"] == ack["data"]["messageId"]
    own = await bob.expect("message")
    assert own["data"]["seq"] == 1
    ack2 = await alice.request(
        {"type": "message", "id": "m2", "data": {"content": "**hi**", "messageType": "markdown"}},
        "ack",
    )
    assert ack2["data"]["seq"] == 2
    assert (await bob.expect("message"))["data"]["messageType"] == "markdown"


async def test_resent_frame_id_is_stored_once_and_acked_again(stack: Stack) -> None:
    c = ctx()
    bob = await join(stack, "bob", c)
    first = await bob.request({"type": "message", "id": "same", "data": {"content": "x"}}, "ack")
    await bob.close()
    bob = await join(stack, "bob", c)  # a reconnect, then the same frame again
    second = await bob.request({"type": "message", "id": "same", "data": {"content": "x"}}, "ack")
    assert second["data"] == first["data"]
    hist = await bob.request({"type": "history", "id": "h", "data": {}}, "history")
    assert [m["content"] for m in hist["data"]["messages"]] == ["x"]
    # another user may use the same id: it is per user
    carol = await join(stack, "carol", c)
    third = await carol.request({"type": "message", "id": "same", "data": {"content": "y"}}, "ack")
    assert third["data"]["seq"] == 2


async def test_history_pages_with_limit_before_seq_and_before_timestamp(stack: Stack) -> None:
    c = ctx()
    a = await join(stack, "alice", c)
    acks = []
    for i in range(7):
        acks.append(
            await a.request({"type": "message", "id": f"h{i}", "data": {"content": f"m{i}"}}, "ack")
        )
    newest = await a.request({"type": "history", "id": "q1", "data": {"limit": 3}}, "history")
    assert [m["seq"] for m in newest["data"]["messages"]] == [5, 6, 7]
    assert newest["data"]["hasMore"] is True
    page = await a.request(
        {"type": "history", "id": "q2", "data": {"limit": 3, "beforeSeq": 5}}, "history"
    )
    assert [m["seq"] for m in page["data"]["messages"]] == [2, 3, 4]
    last = await a.request(
        {"type": "history", "id": "q3", "data": {"limit": 3, "beforeSeq": 2}}, "history"
    )
    assert [m["seq"] for m in last["data"]["messages"]] == [1] and last["data"]["hasMore"] is False
    ts = newest["data"]["messages"][0]["timestamp"]  # message 5
    by_time = await a.request(
        {"type": "history", "id": "q4", "data": {"limit": 100, "before": ts}}, "history"
    )
    assert all(m["timestamp"] < ts for m in by_time["data"]["messages"])
    assert [m["seq"] for m in by_time["data"]["messages"]][-1] <= 4
    bad = await a.request({"type": "history", "id": "q5", "data": {"before": "yesterday"}}, "error")
    assert bad["data"]["code"] == "invalid_message"
    too_many = await a.request({"type": "history", "id": "q6", "data": {"limit": 101}}, "error")
    assert too_many["data"]["code"] == "invalid_message"


async def test_typing_reaches_others_not_own_tabs_and_lapses(stack: Stack) -> None:
    c = ctx()
    alice, bob = await join(stack, "alice", c), await join(stack, "bob", c)
    bob2 = await join(stack, "bob", c)
    await bob.send({"type": "typing", "data": {"isTyping": True}})
    on = await alice.expect("typing")
    assert on["data"] == {"userId": "bob", "username": "Bob", "isTyping": True}
    off = await alice.expect("typing", timeout=5)  # AG_TYPING_TTL_S=1 in tests
    assert off["data"]["isTyping"] is False
    # bob's other tab got neither: a later message arrives with no typing frame before it
    await alice.request({"type": "message", "id": "t1", "data": {"content": "after"}}, "ack")
    await bob2.expect("message")
    assert not [f for f in bob2.seen if f["type"] == "typing"]


async def test_typing_ends_when_typists_last_connection_closes(make_stack) -> None:
    # A TTL far beyond the wait below: the `false` can only come from the close.
    stack = await make_stack(env={"AG_TYPING_TTL_S": "600"})
    c = ctx()
    alice, bob = await join(stack, "alice", c), await join(stack, "bob", c)
    await bob.send({"type": "typing", "data": {"isTyping": True}})
    await alice.expect("typing", where=lambda f: f["data"]["isTyping"])
    await bob.close()
    off = await alice.expect("typing", timeout=10)
    assert off["data"]["isTyping"] is False


async def test_join_and_leave_count_a_users_tabs_as_one_presence(stack: Stack) -> None:
    c = ctx()
    alice = await join(stack, "alice", c)
    bob1 = await join(stack, "bob", c)
    assert (await alice.expect("user_joined"))["data"] == {"userId": "bob", "username": "Bob"}
    bob2 = await join(stack, "bob", c)
    presence = await bob2.expect("presence")
    assert {u["userId"] for u in presence["data"]["users"]} == {"alice", "bob"}
    await bob1.close()
    await bob2.request({"type": "ping", "id": "sync"}, "pong")
    await bob2.close()
    left = await alice.expect("user_left")
    assert left["data"]["userId"] == "bob"
    # exactly one join and one leave for bob's two tabs
    await alice.request({"type": "message", "id": "sync2", "data": {"content": "."}}, "ack")
    await alice.expect("message")
    kinds = [f["type"] for f in alice.seen if f["type"] in ("user_joined", "user_left")]
    assert kinds == []


async def test_bad_frames_get_one_error_each_and_the_connection_stays(stack: Stack) -> None:
    c = ctx()
    a = await join(stack, "alice", c)
    cases = [
        ("{not json", "invalid_json"),
        ('{"type":"message","id":"w1","data":{"content":5}}', "invalid_message"),
        ('{"type":"typing","id":"w2","data":{"isTyping":1}}', "invalid_message"),
        ('{"type":"history","id":"w3","data":{"limit":"5"}}', "invalid_message"),
        ('{"type":"message","id":"w4","data":[]}', "invalid_message"),
        ('{"type":"message","id":"w5","data":{}}', "invalid_message"),
        ('{"type":"message","id":"w6","data":{"content":""}}', "invalid_message"),
        ('{"type":"message","id":"w7","data":{"content":"\\ud83d"}}', "invalid_message"),
        (
            '{"type":"message","id":"w8","data":{"content":"x","messageType":"html"}}',
            "invalid_message",
        ),
        ('{"type":"subscribe","id":"w9","data":{"metrics":["activity"]}}', "unknown_type"),
        ('{"type":"ack","id":"w10","data":{}}', "unknown_type"),
        ('{"type":"nonsense","id":"w11"}', "unknown_type"),
        ('["type","message"]', "invalid_message"),
        ('{"type":"message","id":"","data":{"content":"x"}}', "invalid_message"),
    ]
    for raw, code in cases:
        await a.send(raw)
        err = await a.expect("error")
        assert err["data"]["code"] == code, raw
        assert err["error"]
    deep = '{"type":"message","id":"deep","data":{"x":' + "[" * 5000 + "]" * 5000 + "}}"
    await a.send(deep)
    err = await a.expect("error")
    assert err["data"]["code"] == "invalid_message"  # the id cannot be read safely here
    await a.send(b"\x00binary")
    assert (await a.expect("error"))["data"]["code"] == "invalid_message"
    err = await a.request({"type": "message", "id": "with-id", "data": {"content": 1}}, "error")
    assert err["id"] == "with-id"
    ok = await a.request(
        {"type": "message", "id": "fine", "data": {"content": "still here"}}, "ack"
    )
    assert ok["data"]["seq"] == 1


async def test_oversize_frames_are_refused_and_the_third_in_a_minute_closes_1009(
    make_stack,
) -> None:
    stack = await make_stack(env={"AG_MAX_FRAME_BYTES": "1024"})
    c = ctx()
    a = await join(stack, "alice", c)
    big = '{"type":"message","id":"big","data":{"content":"' + "é" * 600 + '"}}'  # > 1024 bytes
    await a.send(big)
    err = await a.expect("error")
    assert err["data"]["code"] == "too_large" and err["id"] == "big"
    await a.send(big)
    assert (await a.expect("error"))["data"]["code"] == "too_large"
    await a.send(big)
    assert await a.closed() == 1009


async def test_frame_rate_limit_errors_then_closes_1008_and_ping_is_free(make_stack) -> None:
    stack = await make_stack(env={"AG_RATE_FRAMES_PER_MINUTE": "5"})
    c = ctx()
    a = await join(stack, "alice", c)  # query auth: no frame spent
    for i in range(10):
        await a.request({"type": "ping", "id": f"p{i}"}, "pong")
    for i in range(5):
        await a.request({"type": "history", "id": f"h{i}", "data": {}}, "history")
    await a.send({"type": "history", "id": "over", "data": {}})
    err = await a.expect("error")
    assert err["data"]["code"] == "rate_limited" and err["id"] == "over"
    assert await a.closed() == 1008
    assert [f["type"] for f in a.seen if f["type"] != "presence"] == []  # one error only


async def test_connection_rate_limit_answers_429_before_upgrade(make_stack) -> None:
    import websockets

    stack = await make_stack(env={"AG_RATE_CONNECTIONS_PER_MINUTE": "3"})
    for _ in range(3):
        c = await Client.connect(stack.url())
        await c.close()
    with pytest.raises(websockets.InvalidStatus) as info:
        await Client.connect(stack.url())
    assert info.value.response.status_code == 429
    from tests.helpers import http_status

    assert http_status(stack.http("/readyz")) == 200  # plain HTTP does not count


async def test_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_connection_limit(
    make_stack,
) -> None:
    """No AG_TRUSTED_PROXIES: the socket's peer is the client IP, whatever X-Forwarded-For says
    (uvicorn's own proxy-header rewrite, which believes 127.0.0.1, stays off)."""
    import websockets

    stack = await make_stack(env={"AG_RATE_CONNECTIONS_PER_MINUTE": "3"})
    for i in range(3):
        c = await Client.connect(stack.url(), additional_headers={"X-Forwarded-For": f"10.0.0.{i}"})
        await c.close()
    with pytest.raises(websockets.InvalidStatus) as info:
        await Client.connect(stack.url(), additional_headers={"X-Forwarded-For": "10.0.0.9"})
    assert info.value.response.status_code == 429


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(make_stack) -> None:
    stack = await make_stack(
        env={"AG_RATE_CONNECTIONS_PER_MINUTE": "3", "AG_TRUSTED_PROXIES": "127.0.0.1"}
    )
    for i in range(5):  # five clients behind the proxy, each under its own limit
        c = await Client.connect(stack.url(), additional_headers={"X-Forwarded-For": f"10.0.0.{i}"})
        await c.close()


async def test_room_broadcast_limit_is_shared_by_all_gateways(make_stack) -> None:
    stack = await make_stack(env={"AG_RATE_BROADCASTS_PER_MINUTE": "4"}, gateways=2)
    c = ctx()
    a = await join(stack, "alice", c, gateway=0)
    b = await join(stack, "bob", c, gateway=1)
    for i in range(2):
        await a.request({"type": "message", "id": f"a{i}", "data": {"content": "a"}}, "ack")
        await b.request({"type": "message", "id": f"b{i}", "data": {"content": "b"}}, "ack")
    err = await b.request({"type": "message", "id": "b-over", "data": {"content": "b"}}, "error")
    assert err["data"]["code"] == "rate_limited"
    pong = await b.request({"type": "ping", "id": "alive"}, "pong")  # the connection stays
    assert pong["id"] == "alive"
    other = ctx()  # another room has its own budget
    d = await join(stack, "dave", other, gateway=1)
    assert await d.request({"type": "message", "id": "d", "data": {"content": "d"}}, "ack")


async def test_message_sent_through_one_gateway_reaches_a_client_on_another(make_stack) -> None:
    stack = await make_stack(gateways=2)
    c = ctx()
    a = await join(stack, "alice", c, gateway=0)
    b = await join(stack, "bob", c, gateway=1)
    assert (await a.expect("user_joined"))["data"]["userId"] == "bob"
    await a.request({"type": "message", "id": "x", "data": {"content": "across"}}, "ack")
    assert (await b.expect("message"))["data"]["content"] == "across"
    await b.send({"type": "typing", "data": {"isTyping": True}})
    assert (await a.expect("typing"))["data"]["userId"] == "bob"


async def test_recovery_replays_missed_messages_in_order_then_recovered(stack: Stack) -> None:
    c = ctx()
    a = await join(stack, "alice", c)
    for i in range(3):
        await a.request({"type": "message", "id": f"r{i}", "data": {"content": f"m{i}"}}, "ack")
    b = await Client.connect(stack.url(token=token("bob", c), contextId=c, lastSeq=1))
    types = [(await b.recv())["type"] for _ in range(2)]
    assert types == ["connected", "presence"]
    m2, m3, rec = await b.recv(), await b.recv(), await b.recv()
    assert [m2["data"]["seq"], m3["data"]["seq"]] == [2, 3]
    assert rec["type"] == "recovered" and rec["data"] == {"count": 2}
    # live messages after recovery keep coming, with no duplicates
    await a.request({"type": "message", "id": "r3", "data": {"content": "m3"}}, "ack")
    assert (await b.expect("message"))["data"]["seq"] == 4
    # by auth frame too
    e = await Client.connect(stack.url())
    await e.send({"type": "auth", "token": token("eve", c), "contextId": c, "lastSeq": 3})
    rec = await e.expect("recovered")
    assert rec["data"]["count"] == 1
    assert [f["data"]["seq"] for f in e.seen if f["type"] == "message"] == [4]


async def test_recovery_past_the_cap_is_truncated_never_partial(stack: Stack) -> None:
    c = ctx()
    a = await join(stack, "alice", c)
    for i in range(7):  # AG_RECOVERY_MAX=5 in tests
        await a.request({"type": "message", "id": f"t{i}", "data": {"content": "x"}}, "ack")
    b = await Client.connect(stack.url(token=token("bob", c), contextId=c, lastSeq=0))
    rec = await b.expect("recovered")
    assert rec["data"] == {"count": 0, "truncated": True}
    assert not [f for f in b.seen if f["type"] == "message"]


async def test_chat_service_down_means_unavailable_and_the_socket_stays(make_stack) -> None:
    stack = await make_stack()
    c = ctx()
    a = await join(stack, "alice", c)
    stack.services["chat"].stop()
    err = await a.request({"type": "history", "id": "h", "data": {}}, "error")
    assert err["data"]["code"] == "unavailable"
    err = await a.request(
        {"type": "message", "id": "m", "data": {"content": "x"}}, "error", timeout=10
    )
    assert err["data"]["code"] == "unavailable"
    from tests.helpers import wait_chat_ready

    stack.services["chat"].start()
    await wait_chat_ready(stack.nats_url)
    # the frame was not applied: re-sending the same id stores it now, once
    ack = await a.request({"type": "message", "id": "m", "data": {"content": "x"}}, "ack")
    assert ack["data"]["seq"] == 1


async def test_shutdown_closes_sockets_with_1001(make_stack) -> None:
    stack = await make_stack()
    a = await join(stack, "alice", ctx())
    proc, _ = stack.gateways[0]
    stop = asyncio.get_running_loop().run_in_executor(None, proc.stop)
    assert await a.closed() == 1001
    assert await stop in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown


async def test_batch_1_sockets_get_the_same_frames_some_sharing_a_message(stack: Stack) -> None:
    """Batched delivery: a ``batch=1`` socket may get several frames as one JSON array, in
    the order a socket without it gets them one by one."""
    c = ctx()
    a = await join(stack, "alice", c)
    for i in range(4):
        await a.request({"type": "message", "id": f"b{i}", "data": {"content": f"m{i}"}}, "ack")
    plain = await Client.connect(stack.url(token=token("bob", c), contextId=c, lastSeq=0))
    batched = await Client.connect(
        stack.url(token=token("carl", c), contextId=c, lastSeq=0, batch=1)
    )
    raws = []
    frames: list[dict[str, Any]] = []
    while not any(f["type"] == "recovered" for f in frames):
        raw = json.loads(await asyncio.wait_for(batched.ws.recv(), T(5)))
        raws.append(raw)
        frames += raw if isinstance(raw, list) else [raw]
    expected = [await plain.recv() for _ in range(len(frames))]
    assert [f["type"] for f in frames] == [f["type"] for f in expected]
    assert [f["data"]["seq"] for f in frames if f["type"] == "message"] == [1, 2, 3, 4]
    assert any(isinstance(r, list) and len(r) > 1 for r in raws)  # the recovery shared one
