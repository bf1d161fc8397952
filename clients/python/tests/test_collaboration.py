"""Collaboration: local edits, acks, remote edits, version_mismatch and reconnects."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_server import FakeServer, Peer, timeout, token

from atomic_guide_client import Backoff, CollaborationClient


async def joined_client(
    server: FakeServer, backoff: Backoff, content: str = "hello", version: int = 3
) -> tuple[CollaborationClient, Peer]:
    client = CollaborationClient(server.url, "ctx", token(), backoff=backoff)
    await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()
    joining = asyncio.ensure_future(client.join("s1"))
    request = await peer.recv_type("join_session")
    assert request["data"] == {"sessionId": "s1"}
    await peer.send("session_joined", joined_data(content, version), id=request["id"])
    await asyncio.wait_for(joining, timeout())
    return client, peer


def joined_data(content: str, version: int) -> dict[str, Any]:
    return {
        "sessionId": "s1",
        "document": {"content": content, "version": version},
        "participants": [{"userId": "u1", "username": "Ada", "role": "participant"}],
    }


def remote_insert(position: int, content: str, version: int) -> dict[str, Any]:
    return {
        "sessionId": "s1",
        "operation": "insert",
        "position": position,
        "content": content,
        "version": version,
        "author": {"id": "u2", "name": "Bo"},
    }


async def test_a_local_edit_is_sent_against_the_seen_version_and_converges(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client, peer = await joined_client(server, fast_backoff)
    assert (client.document, client.version) == ("hello", 3)
    client.insert(5, " 🌍")
    assert client.document == "hello 🌍"
    edit = await peer.recv_type("edit")
    assert edit["data"] == {
        "sessionId": "s1",
        "operation": "insert",
        "position": 5,
        "version": 3,
        "content": " 🌍",
    }
    client.insert(8, "!")  # UTF-16: "hello " is 6 units, the globe 2 more
    # Someone else's insert was applied first; then ours.
    await peer.send("edit", remote_insert(0, "¡", 4))
    await peer.send("ack", {"version": 5, "position": 6}, id=edit["id"])
    second = await peer.recv_type("edit")
    assert second["data"]["position"] == 9 and second["data"]["version"] == 5
    await peer.send("ack", {"version": 6, "position": 9}, id=second["id"])
    await asyncio.wait_for(client.synced(), timeout())
    assert (client.document, client.version) == ("¡hello 🌍!", 6)
    await client.close()


async def test_version_mismatch_fetches_a_snapshot_and_rebases_the_edit(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client, peer = await joined_client(server, fast_backoff)
    client.delete(0, 1)  # "ello"
    edit = await peer.recv_type("edit")
    assert edit["data"]["length"] == 1
    await peer.send("error", {"code": "version_mismatch", "version": 40}, id=edit["id"])
    snapshot = await peer.recv_type("snapshot")
    await peer.send(
        "snapshot", {"sessionId": "s1", "content": ">>hello", "version": 40}, id=snapshot["id"]
    )
    retry = await peer.recv_type("edit")
    assert retry["data"]["position"] == 2 and retry["data"]["version"] == 40
    assert retry["id"] != edit["id"]
    assert client.document == ">>ello"
    await peer.send("ack", {"version": 41, "position": 2}, id=retry["id"])
    await asyncio.wait_for(client.synced(), timeout())
    assert client.version == 41
    await client.close()


async def test_after_a_reconnect_the_session_is_rejoined_and_the_edit_resent_with_its_id(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client, peer = await joined_client(server, fast_backoff)
    client.insert(0, "A")
    edit = await peer.recv_type("edit")
    await peer.close(1012, "restart")  # no ack: did it apply? the client cannot know
    client.insert(1, "B")  # offline edit, buffered

    peer2 = await server.next_peer()
    rejoin = await peer2.recv_type("join_session")
    resent = await peer2.recv_type("edit")
    assert resent == edit  # same id, same base version: the server dedups
    # The first socket had applied it; someone else typed meanwhile.
    await peer2.send("session_joined", joined_data("xAhello", 5), id=rejoin["id"])
    await peer2.send("ack", {"version": 4, "position": 0}, id=resent["id"])
    snapshot = await peer2.recv_type("snapshot")
    await peer2.send(
        "snapshot", {"sessionId": "s1", "content": "xAhello", "version": 5}, id=snapshot["id"]
    )
    buffered = await peer2.recv_type("edit")
    assert buffered["data"] == {
        "sessionId": "s1",
        "operation": "insert",
        "position": 2,
        "version": 5,
        "content": "B",
    }
    await peer2.send("ack", {"version": 6, "position": 2}, id=buffered["id"])
    await asyncio.wait_for(client.synced(), timeout())
    assert client.document == "xABhello"
    await client.close()


async def test_cursor_is_fire_and_forget_and_observers_may_not_edit(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client, peer = await joined_client(server, fast_backoff)
    assert client.cursor(2, selection_end=4)
    assert (await peer.recv_type("cursor"))["data"] == {
        "sessionId": "s1",
        "position": 2,
        "selectionEnd": 4,
    }
    with pytest.raises(ValueError):
        client.insert(99, "x")  # outside the document
    with pytest.raises(ValueError):
        client.delete(0, -1)
    await client.close()

    observer = CollaborationClient(server.url, "ctx", token(), backoff=fast_backoff)
    await asyncio.wait_for(observer.connect(), timeout())
    peer2 = await server.next_peer()
    joining = asyncio.ensure_future(observer.join("s1", role="observer"))
    request = await peer2.recv_type("join_session")
    await peer2.send("session_joined", joined_data("text", 1), id=request["id"])
    await asyncio.wait_for(joining, timeout())
    with pytest.raises(PermissionError):
        observer.insert(0, "x")
    await observer.close()


async def test_a_refused_edit_is_dropped_and_the_error_surfaces(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client, peer = await joined_client(server, fast_backoff)
    errors: list[str] = []
    client.on("error", lambda frame: errors.append(frame.data["code"]))  # type: ignore[union-attr]
    client.insert(0, "X")
    edit = await peer.recv_type("edit")
    await peer.send("error", {"code": "invalid_message"}, id=edit["id"], error="too big")
    snapshot = await peer.recv_type("snapshot")
    await peer.send(
        "snapshot", {"sessionId": "s1", "content": "hello", "version": 3}, id=snapshot["id"]
    )
    await asyncio.wait_for(client.synced(), timeout())
    assert client.document == "hello" and errors == ["invalid_message"]
    await client.close()


async def test_snapshot_returns_the_server_text_without_touching_local_state(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client, peer = await joined_client(server, fast_backoff)
    fetching = asyncio.ensure_future(client.snapshot())
    request = await peer.recv_type("snapshot")
    assert request["data"] == {"sessionId": "s1"}
    await peer.send(
        "snapshot", {"sessionId": "s1", "content": "other", "version": 9}, id=request["id"]
    )
    snap = await asyncio.wait_for(fetching, timeout())
    assert (snap.content, snap.version) == ("other", 9)
    assert client.document == "hello"
    leaving = asyncio.ensure_future(client.leave())
    request = await peer.recv_type("leave_session")
    await peer.send("session_left", {"sessionId": "s1"}, id=request["id"])
    await asyncio.wait_for(leaving, timeout())
    assert client.session_id is None and client.document == ""
    await client.close()


async def test_a_failed_resync_snapshot_is_asked_for_again(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client, peer = await joined_client(server, fast_backoff)
    await peer.send("error", {"code": "rate_limited"})  # an id-less error is not a reply
    await peer.send("edit", remote_insert(0, "x", 9))  # a gap: 4..8 are missing
    first = await peer.recv_type("snapshot")
    await peer.send("error", {"code": "internal"}, id=first["id"], error="oops")
    second = await peer.recv_type("snapshot")
    assert second["id"] != first["id"]
    await peer.send(
        "snapshot", {"sessionId": "s1", "content": "xhello!", "version": 9}, id=second["id"]
    )
    await asyncio.wait_for(client.synced(), timeout())
    assert (client.document, client.version) == ("xhello!", 9)
    await client.close()


async def test_a_snapshot_that_overtakes_a_retried_edit_waits_for_the_edit(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client, peer = await joined_client(server, fast_backoff)
    client.insert(0, "A")
    edit = await peer.recv_type("edit")
    await peer.send("edit", remote_insert(50, "!", 4))  # does not fit "hello": resync
    stale = await peer.recv_type("snapshot")
    await peer.send("error", {"code": "unavailable"}, id=edit["id"])  # retried later
    await peer.send(
        "snapshot", {"sessionId": "s1", "content": "hello!", "version": 9}, id=stale["id"]
    )
    retried = await peer.recv_type("edit")
    assert retried == edit
    await peer.send("ack", {"version": 10, "position": 0}, id=edit["id"])
    fresh = await peer.recv_type("snapshot")
    await peer.send(
        "snapshot", {"sessionId": "s1", "content": "Ahello!", "version": 10}, id=fresh["id"]
    )
    await asyncio.wait_for(client.synced(), timeout())
    assert (client.document, client.version) == ("Ahello!", 10)
    await client.close()
