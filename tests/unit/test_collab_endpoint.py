"""The gateway's collaboration endpoint without NATS: reply order around held frames."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from services.gateway.collaboration import CollaborationEndpoint
from services.gateway.connection import Conn
from services.gateway.session import frame_text
from shared.auth import Identity
from shared.config import load_settings
from shared.schemas.commands import CollabReply
from shared.schemas.wire import ClientFrame, decode_client_frame

PATH = "collaboration"


class FakeHub:
    gateway_id = "gw"

    def next_presence_seq(self) -> int:
        return 1


class FakeNats:
    is_connected = False

    def jetstream(self) -> object:
        return object()


def frame(raw: dict[str, Any]) -> ClientFrame:
    return decode_client_frame(PATH, json.dumps(raw))


async def endpoint_and_conn() -> tuple[CollaborationEndpoint, Conn, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(json.loads(message["text"]))

    ep = CollaborationEndpoint(load_settings({}), FakeHub(), FakeNats())  # type: ignore[arg-type]
    conn = Conn(PATH, send, 64, "peer")
    conn.identity = Identity("alice", "Alice", frozenset({"ctx"}), ("student",), 1e12)
    conn.context_id = "ctx"
    conn.start()

    async def attach(member: Any) -> None:
        ep._members.setdefault(ep._subject(member), {})[member.conn.id] = member

    ep._attach = attach  # type: ignore[method-assign]
    return ep, conn, sent


async def until(check: Any, what: str) -> None:
    async with asyncio.timeout(2):
        while not check():
            await asyncio.sleep(0.01)


def live_edit(ep: CollaborationEndpoint, version: int) -> None:
    """An edit broadcast arriving for the session, as ``_on_live`` hands it over."""
    text = frame_text("edit", {"sessionId": "s", "version": version})
    for member in ep._members[next(iter(ep._members))].values():
        member.offer(text, version, False)


async def test_frames_held_by_a_join_are_released_before_the_next_reply() -> None:
    """join_session then edit back to back: session_joined, the held edit v6, then ack v7."""
    ep, conn, sent = await endpoint_and_conn()
    answer: asyncio.Future[CollabReply] = asyncio.get_running_loop().create_future()

    async def request(req: Any) -> CollabReply:
        return await answer

    async def edit_io(frame: ClientFrame, member: Any, data: Any) -> str:
        return frame_text("ack", {"version": 7, "position": 0}, id=frame.id)

    ep._request = request  # type: ignore[method-assign]
    ep._edit_io = edit_io  # type: ignore[method-assign,assignment]
    try:
        join = frame({"type": "join_session", "id": "j", "data": {"sessionId": "s"}})
        await conn.reply(ep.handle(conn, join))
        edit = {"operation": "insert", "position": 0, "content": "x", "version": 5}
        await conn.reply(ep.handle(conn, frame({"type": "edit", "id": "e", "data": edit})))
        await until(lambda: ep._members, "the member is attached")
        live_edit(ep, 6)  # held: the join is under way
        answer.set_result(CollabReply(content="abcde", version=5, participants=[]))
        await until(lambda: len(sent) == 3, "three frames")
        assert [(f["type"], f["data"].get("version")) for f in sent] == [
            ("session_joined", None),
            ("edit", 6),
            ("ack", 7),
        ]
    finally:
        await conn.stop()
        await ep.stop()


async def test_a_failed_join_still_releases_and_a_snapshot_drops_what_it_contains() -> None:
    ep, conn, sent = await endpoint_and_conn()
    replies = [CollabReply(content="ab", version=2, participants=[])]
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def request(req: Any) -> CollabReply:
        await gate
        return replies.pop(0)

    ep._request = request  # type: ignore[method-assign]
    try:
        await conn.reply(
            ep.handle(conn, frame({"type": "join_session", "id": "j", "data": {"sessionId": "s"}}))
        )
        gate.set_result(None)
        await until(lambda: len(sent) == 1, "joined")
        member = ep._joined[conn.id]["s"]
        assert member.holds == 0
        replies.append(CollabReply(content="abcd", version=4))
        gate = asyncio.get_running_loop().create_future()
        await conn.reply(ep.handle(conn, frame({"type": "snapshot", "id": "s1", "data": {}})))
        assert member.holds == 1
        live_edit(ep, 4)  # in the snapshot: dropped
        live_edit(ep, 5)  # after it: follows it
        gate.set_result(None)
        await until(lambda: len(sent) == 3, "snapshot and edit")
        assert [(f["type"], f["data"].get("version")) for f in sent[1:]] == [
            ("snapshot", 4),
            ("edit", 5),
        ]
        assert member.holds == 0
    finally:
        await conn.stop()
        await ep.stop()
