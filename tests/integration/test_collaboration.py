"""The collaboration endpoint end to end: nats-server, collaboration service, gateway, sockets."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import T
from tests.helpers import Client, Stack, token

pytestmark = pytest.mark.integration

PATH = "/api/collaboration/ws"


def ctx() -> str:
    return "course-" + uuid.uuid4().hex[:8]


@pytest.fixture
async def collab(make_stack: Callable[..., Any]) -> Stack:
    stack: Stack = await make_stack(chat=False, services=["collaboration"])
    return stack


async def connect(
    stack: Stack, user: str, context: str, roles: tuple[str, ...] = ("learner",), gateway: int = 0
) -> Client:
    tok = token(user, context, roles=roles)
    c = await Client.connect(
        stack.url(PATH, gateway=gateway, token=tok, contextId=context), max_size=None
    )
    await c.expect("connected")
    return c


async def join(c: Client, session: str, role: str | None = None) -> dict[str, Any]:
    data = {"sessionId": session} | ({"role": role} if role else {})
    frame = await c.request(
        {"type": "join_session", "id": f"j-{session}", "data": data}, "session_joined"
    )
    return dict(frame["data"])


async def edit(c: Client, cid: str, reply: str = "ack", **data: Any) -> dict[str, Any]:
    return await c.request({"type": "edit", "id": cid, "data": data}, reply)


async def insert(c: Client, cid: str, position: int, content: str, version: int) -> dict[str, Any]:
    ack = await edit(
        c, cid, operation="insert", position=position, content=content, version=version
    )
    return dict(ack["data"])


async def snapshot(c: Client, session: str | None = None) -> dict[str, Any]:
    data = {"sessionId": session} if session else {}
    frame = await c.request(
        {"type": "snapshot", "id": "snap-" + uuid.uuid4().hex[:6], "data": data}, "snapshot"
    )
    return dict(frame["data"])


async def test_join_gives_an_empty_document_and_participants_and_tells_the_others(
    collab: Stack,
) -> None:
    c = ctx()
    alice = await Client.connect(collab.url(PATH, token=token("alice", c), contextId=c))
    connected = await alice.recv()
    assert connected["type"] == "connected" and connected["data"]["contextId"] == c
    assert connected["data"]["userId"] == "alice" and connected["data"]["roles"] == ["learner"]
    joined = await join(alice, "s1")
    assert joined == {
        "sessionId": "s1",
        "document": {"content": "", "version": 0},
        "participants": [{"userId": "alice", "username": "Alice", "role": "participant"}],
    }
    bob = await connect(collab, "bob", c, roles=("instructor",))
    joined = await join(bob, "s1", role="host")
    assert [p["userId"] for p in joined["participants"]] == ["alice", "bob"]
    seen = await alice.expect("participant_joined")
    assert seen["data"] == {"sessionId": "s1", "userId": "bob", "username": "Bob", "role": "host"}


async def test_edit_is_acked_to_the_sender_and_broadcast_to_everyone_else_and_own_other_tabs(
    collab: Stack,
) -> None:
    c = ctx()
    alice, alice2, bob = [await connect(collab, u, c) for u in ("alice", "alice", "bob")]
    for x in (alice, alice2, bob):
        await join(x, "doc")
    ack = await edit(alice, "e1", operation="insert", position=0, content="héllo 😀", version=0)
    assert ack["id"] == "e1" and ack["data"] == {"version": 1, "position": 0}
    for other in (bob, alice2):
        got = await other.expect("edit")
        assert got["data"] == {
            "sessionId": "doc",
            "operation": "insert",
            "position": 0,
            "content": "héllo 😀",
            "length": 8,  # UTF-16 units: the emoji is two
            "version": 1,
            "author": {"id": "alice", "name": "Alice"},
        }
    # positions count UTF-16 units: 8 is the end, after the surrogate pair
    assert (await insert(bob, "b1", 8, "!", 1)) == {"version": 2, "position": 8}
    assert (await snapshot(alice)) == {"sessionId": "doc", "content": "héllo 😀!", "version": 2}
    # the sender got bob's edit, not its own
    assert [f["data"]["version"] for f in alice.seen if f["type"] == "edit"] == [2]


async def test_concurrent_edits_are_transformed_and_a_split_delete_is_two_versions(
    collab: Stack,
) -> None:
    c = ctx()
    alice, bob = await connect(collab, "alice", c), await connect(collab, "bob", c)
    await join(alice, "d")
    await join(bob, "d")
    await insert(alice, "a1", 0, "abcdef", 0)
    await bob.expect("edit")
    # both at version 1: bob inserts inside the range alice deletes
    await insert(bob, "b1", 3, "XY", 1)
    ack = await edit(
        alice, "a2", operation="delete", position=1, length=4, content="bcde", version=1
    )
    assert ack["data"] == {"version": 4, "position": 5}  # right part first: "de" after "XY"
    parts = [await bob.expect("edit") for _ in range(2)]
    assert [(p["data"]["position"], p["data"]["length"], p["data"]["version"]) for p in parts] == [
        (5, 2, 3),
        (1, 2, 4),
    ]
    assert "content" not in parts[0]["data"]
    assert (await snapshot(bob))["content"] == "aXYf"
    # an edit whose text is already gone transforms to nothing: acked with the current version
    gone = await edit(bob, "b2", operation="delete", position=3, length=1, version=1)
    assert gone["data"]["version"] == 4
    # two inserts at one place: the one applied first stays left
    await insert(alice, "a3", 0, "1", 4)
    assert (await insert(bob, "b3", 0, "2", 4))["position"] == 1
    assert (await snapshot(alice))["content"] == "12aXYf"


async def test_a_resent_edit_id_is_applied_once_and_acked_again(collab: Stack) -> None:
    c = ctx()
    alice = await connect(collab, "alice", c)
    await join(alice, "r")
    first = await insert(alice, "same", 0, "once", 0)
    await alice.close()
    alice = await connect(collab, "alice", c)  # a reconnect, then the same frame again
    joined = await join(alice, "r")
    assert joined["document"] == {"content": "once", "version": 1}
    again = await insert(alice, "same", 0, "once", 0)
    assert again == first
    assert (await snapshot(alice)) == {"sessionId": "r", "content": "once", "version": 1}
    # the id is per user: another user's "same" is another edit
    bob = await connect(collab, "bob", c)
    await join(bob, "r")
    assert (await insert(bob, "same", 4, "!", 1))["version"] == 2


async def test_cursor_reaches_other_users_only(collab: Stack) -> None:
    c = ctx()
    alice, alice2, bob = [await connect(collab, u, c) for u in ("alice", "alice", "bob")]
    for x in (alice, alice2, bob):
        await join(x, "cur")
    await alice.send({"type": "cursor", "data": {"position": 0, "selectionEnd": 0}})
    got = await bob.expect("cursor")
    assert got["data"] == {
        "sessionId": "cur",
        "position": 0,
        "selectionEnd": 0,
        "userId": "alice",
    }
    await insert(bob, "x", 0, "x", 0)
    await alice2.expect("edit")
    assert not [f for f in alice2.seen if f["type"] == "cursor"]


async def test_one_participant_per_user_over_tabs_and_leave(collab: Stack) -> None:
    c = ctx()
    alice = await connect(collab, "alice", c)
    await join(alice, "p")
    bob1, bob2 = await connect(collab, "bob", c), await connect(collab, "bob", c)
    await join(bob1, "p", role="observer")
    await alice.expect("participant_joined")
    joined = await join(bob2, "p")
    roles = {p["userId"]: p["role"] for p in joined["participants"]}
    assert roles == {"alice": "participant", "bob": "participant"}  # the strongest of the tabs
    left = await bob1.request({"type": "leave_session", "id": "l1", "data": {}}, "session_left")
    assert left["data"] == {"sessionId": "p"}
    await bob2.close()
    gone = await alice.expect("participant_left")
    assert gone["data"] == {"sessionId": "p", "userId": "bob", "username": "Bob"}
    await insert(alice, "sync", 0, ".", 0)  # nothing else arrived in between
    assert not [f for f in alice.seen if f["type"].startswith("participant_")]


async def test_session_id_may_be_left_out_only_with_exactly_one_session(collab: Stack) -> None:
    c = ctx()
    alice = await connect(collab, "alice", c)
    err = await edit(alice, "n0", "error", operation="insert", position=0, content="x", version=0)
    assert err["data"]["code"] == "invalid_message"
    await join(alice, "one")
    assert (await insert(alice, "n1", 0, "x", 0))["version"] == 1
    await join(alice, "two")
    err = await edit(alice, "n2", "error", operation="insert", position=0, content="x", version=0)
    assert err["data"]["code"] == "invalid_message"
    err = await edit(
        alice,
        "n3",
        "error",
        sessionId="three",
        operation="insert",
        position=0,
        content="x",
        version=0,
    )
    assert err["data"]["code"] == "not_found"
    assert (await snapshot(alice, "one"))["content"] == "x"
    assert (await snapshot(alice, "two"))["content"] == ""


async def test_roles_observer_may_not_edit_and_host_needs_instructor(collab: Stack) -> None:
    c = ctx()
    learner = await connect(collab, "lea", c)
    err = await learner.request(
        {"type": "join_session", "id": "h", "data": {"sessionId": "r", "role": "host"}}, "error"
    )
    assert err["data"]["code"] == "forbidden"
    await join(learner, "r", role="observer")
    err = await edit(learner, "o1", "error", operation="insert", position=0, content="x", version=0)
    assert err["data"]["code"] == "forbidden"
    admin = await connect(collab, "ada", c, roles=("admin",))
    await join(admin, "r", role="host")
    assert (await insert(admin, "h1", 0, "ok", 0))["version"] == 1
    assert (await learner.expect("edit"))["data"]["content"] == "ok"  # observers still watch


async def test_bad_edits_are_refused_and_change_nothing(make_stack: Callable[..., Any]) -> None:
    stack = await make_stack(
        chat=False,
        services=["collaboration"],
        env={"AG_COLLAB_HISTORY": "3", "AG_DOC_MAX_BYTES": "64"},
    )
    c = ctx()
    a = await connect(stack, "alice", c)
    await join(a, "e")
    await insert(a, "i1", 0, "a😀b", 0)  # UTF-16: a=0, 😀=1..2, b=3
    cases: list[tuple[dict[str, Any], str]] = [
        ({"operation": "insert", "position": 0, "content": "x", "version": 2}, "version_mismatch"),
        ({"operation": "insert", "position": 5, "content": "x", "version": 1}, "invalid_message"),
        ({"operation": "delete", "position": 3, "length": 2, "version": 1}, "invalid_message"),
        ({"operation": "insert", "position": 2, "content": "x", "version": 1}, "invalid_message"),
        ({"operation": "delete", "position": 2, "length": 1, "version": 1}, "invalid_message"),
        (
            {"operation": "delete", "position": 0, "length": 1, "content": "z", "version": 1},
            "invalid_message",
        ),
        ({"operation": "insert", "position": 0, "content": "", "version": 1}, "invalid_message"),
        ({"operation": "delete", "position": 0, "version": 1}, "invalid_message"),
        ({"operation": "insert", "position": 0, "content": "x" * 60, "version": 1}, "too_large"),
        ({"operation": "move", "position": 0, "version": 1}, "invalid_message"),
        ({"operation": "insert", "position": -1, "content": "x", "version": 1}, "invalid_message"),
        ({"operation": "insert", "position": "0", "content": "x", "version": 1}, "invalid_message"),
    ]
    for n, (data, code) in enumerate(cases):
        err = await edit(a, f"bad{n}", "error", **data)
        assert err["data"]["code"] == code, data
    err = await edit(a, "mm", "error", operation="insert", position=0, content="x", version=9)
    assert err["data"] == {"code": "version_mismatch", "version": 1}
    await a.send(
        '{"type":"edit","id":"lone","data":{"operation":"insert","position":0,"content":"\\ud83d","version":1}}'
    )
    assert (await a.expect("error", where=lambda f: f.get("id") == "lone"))["data"][
        "code"
    ] == "invalid_message"
    big = await edit(a, "big", "error", operation="insert", position=0, content="é" * 40, version=1)
    assert big["data"] == {"code": "too_large", "limit": 64}
    assert (await snapshot(a))["content"] == "a😀b"
    # the history keeps 3 operations: a base version older than that is refused
    for v in range(1, 5):
        await insert(a, f"h{v}", 0, "-", v)
    old = await edit(a, "old", "error", operation="insert", position=0, content="x", version=1)
    assert old["data"] == {"code": "version_mismatch", "version": 5}
    assert (await insert(a, "recent", 0, "+", 2))["version"] == 6


async def test_service_down_means_unavailable_and_the_resent_edit_applies_once(
    collab: Stack,
) -> None:
    from tests.helpers import start_service_ready

    c = ctx()
    a = await connect(collab, "alice", c)
    await join(a, "down")
    collab.services["collaboration"].stop()
    err = await edit(
        a, "m", "error", timeout=10, operation="insert", position=0, content="x", version=0
    )
    assert err["data"]["code"] == "unavailable"
    err = await a.request({"type": "snapshot", "id": "s", "data": {}}, "error", timeout=10)
    assert err["data"]["code"] == "unavailable"
    await start_service_ready(collab, "collaboration")
    assert (await insert(a, "m", 0, "x", 0)) == {"version": 1, "position": 0}
    assert (await insert(a, "m", 0, "x", 0)) == {"version": 1, "position": 0}
    assert (await snapshot(a))["content"] == "x"


async def test_joins_and_leaves_are_logged_as_events(collab: Stack) -> None:
    import nats

    from shared import subjects
    from shared.schemas.events import decode_event
    from tests.helpers import log_entries

    c = ctx()
    a = await connect(collab, "alice", c)
    b = await connect(collab, "alice", c)
    await join(a, "log")
    await join(b, "log")
    await a.close()
    await b.close()
    nc = await nats.connect(collab.nats_url)
    try:
        kinds: list[str] = []
        deadline = time.monotonic() + T(10)
        while time.monotonic() < deadline:
            kinds = [
                type(decode_event(m.data)).__name__
                for m in await log_entries(nc, subjects.collab_presence(c, "log"))
            ]
            if len(kinds) >= 2:
                break
            await asyncio.sleep(0.1)  # polling the log another process writes
        assert kinds == ["ParticipantJoined", "ParticipantLeft"]
    finally:
        await nc.close()
