"""Chat: exactly-once, in-order delivery across reconnects (lastSeq, recovered, history)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_server import FakeServer, Peer, iso_now, timeout, token

from atomic_guide_client import Backoff, ChatClient
from atomic_guide_client.frames import MessageFrame, RecoveredFrame


def message(seq: int) -> dict[str, Any]:
    return {
        "id": f"m{seq}",
        "seq": seq,
        "content": f"text {seq}",
        "messageType": "text",
        "author": {"id": "u2", "name": "Bo"},
        "timestamp": iso_now(),
    }


async def send_messages(peer: Peer, *seqs: int) -> None:
    for seq in seqs:
        await peer.send("message", message(seq))


async def delivered_seqs(client: ChatClient, count: int) -> list[int]:
    """The seqs of the next ``count`` message frames the application iterates."""
    seqs: list[int] = []
    async with asyncio.timeout(timeout()):
        async for frame in client:
            if isinstance(frame, MessageFrame):
                seqs.append(frame.data.seq)
                if len(seqs) == count:
                    return seqs
    return seqs


async def next_of(client: ChatClient, type_: str) -> Any:
    async with asyncio.timeout(timeout()):
        async for frame in client:
            if frame.type == type_:
                return frame
    raise AssertionError(f"no {type_}")


@pytest.mark.parametrize("auth_mode", ["message", "query"])
async def test_reconnect_resumes_with_last_seq_and_delivers_the_replay_once_in_order(
    server: FakeServer, fast_backoff: Backoff, auth_mode: str
) -> None:
    client = ChatClient(server.url, "ctx", token(), auth_mode=auth_mode, backoff=fast_backoff)  # type: ignore[arg-type]
    await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()
    assert peer.last_seq is None  # nothing seen yet: a plain connect
    await send_messages(peer, 1, 2, 3)
    assert await delivered_seqs(client, 3) == [1, 2, 3]
    await peer.close(1012, "restart")

    peer2 = await server.next_peer()
    assert peer2.last_seq == 3
    # A live message overtakes the replay; the replay repeats one and comes out of order.
    await send_messages(peer2, 6, 3, 5, 4)
    await peer2.send("recovered", {"count": 2})
    await send_messages(peer2, 7)
    assert await delivered_seqs(client, 4) == [4, 5, 6, 7]
    assert client.last_seq == 7
    await client.close()


async def test_recovered_is_delivered_after_the_replayed_messages(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = ChatClient(server.url, "ctx", token(), last_seq=10, backoff=fast_backoff)
    await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()
    assert peer.last_seq == 10  # a persisted seq resumes on the first connection too
    await send_messages(peer, 11, 12)
    await peer.send("recovered", {"count": 2})
    kinds = []
    async with asyncio.timeout(timeout()):
        async for frame in client:
            kinds.append(frame.type)
            if isinstance(frame, RecoveredFrame):
                break
    assert kinds == ["connected", "message", "message", "recovered"]
    await client.close()


async def test_truncated_recovery_pages_history_back_to_last_seq(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = ChatClient(
        server.url, "ctx", token(), last_seq=3, history_page_size=3, backoff=fast_backoff
    )
    await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()
    await send_messages(peer, 11)  # live, during recovery
    await peer.send("recovered", {"count": 0, "truncated": True})

    first = await peer.recv_type("history")
    assert first["data"] == {"limit": 3, "beforeSeq": 11}
    await peer.send(
        "history", {"messages": [message(s) for s in (8, 9, 10)], "hasMore": True}, id=first["id"]
    )
    await send_messages(peer, 12)  # still held: the gap is not filled yet
    second = await peer.recv_type("history")
    assert second["data"] == {"limit": 3, "beforeSeq": 8}
    await peer.send(
        "history", {"messages": [message(s) for s in (5, 6, 7)], "hasMore": True}, id=second["id"]
    )
    third = await peer.recv_type("history")
    assert third["data"] == {"limit": 3, "beforeSeq": 5}
    page = {"messages": [message(s) for s in (2, 3, 4)], "hasMore": True}
    await peer.send("history", page, id=third["id"])

    assert await delivered_seqs(client, 9) == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    recovered = await next_of(client, "recovered")
    assert recovered.data.truncated is True
    await send_messages(peer, 13)
    assert await delivered_seqs(client, 1) == [13]
    await client.close()


async def test_a_failed_gap_fill_still_releases_what_arrived(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = ChatClient(server.url, "ctx", token(), last_seq=3, backoff=fast_backoff)
    await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()
    await send_messages(peer, 9)
    await peer.send("recovered", {"count": 0, "truncated": True})
    request = await peer.recv_type("history")
    await peer.send("error", {"code": "forbidden"}, id=request["id"])
    assert await delivered_seqs(client, 1) == [9]
    await client.close()


async def test_send_message_returns_the_ack_and_history_returns_a_page(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = ChatClient(server.url, "ctx", token(), backoff=fast_backoff)
    await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()

    sending = asyncio.ensure_future(client.send_message("**hi**", message_type="markdown"))
    frame = await peer.recv_type("message")
    assert frame["data"] == {"content": "**hi**", "messageType": "markdown"}
    await peer.send("ack", {"messageId": "m9", "seq": 9}, id=frame["id"])
    ack = await asyncio.wait_for(sending, timeout())
    assert (ack.message_id, ack.seq) == ("m9", 9)

    paging = asyncio.ensure_future(client.history(limit=2, before="2026-01-01T00:00:00.000Z"))
    request = await peer.recv_type("history")
    assert request["data"] == {"limit": 2, "before": "2026-01-01T00:00:00.000Z"}
    await peer.send(
        "history", {"messages": [message(1), message(2)], "hasMore": True}, id=request["id"]
    )
    page = await asyncio.wait_for(paging, timeout())
    assert [m.seq for m in page.messages] == [1, 2] and page.has_more
    await client.close()
