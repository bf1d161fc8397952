"""The collaboration endpoint on the in-memory bus: replies and live frames in the right order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from services.gateway.collaboration import CollaborationEndpoint
from services.gateway.connection import Authed
from services.gateway.session import dispatch, frame_text
from shared import subjects
from shared.bus.port import Message
from shared.schemas.commands import CollabReply, CollabRequest
from shared.schemas.wire import ClientFrame, decode_client_frame
from tests.gateway_support import Kit, Socket

CTX = "ctx"


def frame(obj: dict[str, Any]) -> ClientFrame:
    return decode_client_frame("collaboration", json.dumps(obj))


class Harness:
    """The endpoint, one socket, and a collaboration service that answers when told to."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.ep = CollaborationEndpoint(kit.parts)
        self.socket = Socket("collaboration")
        self.replies: asyncio.Queue[CollabReply] = asyncio.Queue()
        self.gate = asyncio.Event()
        self.gate.set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        decoder = msgspec.msgpack.Decoder(CollabRequest)

        async def answer(msg: Message) -> None:
            await self.gate.wait()
            await msg.respond(msgspec.msgpack.encode(await self.replies.get()))

        async def on(msg: Message) -> None:
            decoder.decode(msg.data)
            if msg.reply:
                self._tasks.append(asyncio.create_task(answer(msg)))

        await self.kit.bus.subscribe(subjects.RPC_COLLAB, on)
        self.authed: Authed = self.socket.open("alice", CTX)
        await self.ep.on_open(self.authed, None)
        assert (await self.socket.next())["type"] == "connected"

    async def send(self, obj: dict[str, Any]) -> None:
        await self.authed.reply(dispatch(self.ep, self.authed, frame(obj)))

    async def live_edit(self, version: int) -> None:
        """An edit broadcast for the session, through the bus and the fan-out."""
        text = frame_text("edit", {"sessionId": "s", "version": version})
        await self.kit.bus.publish(
            subjects.collab_live(CTX, "s"), text.encode(), {subjects.HDR_SEQ: str(version)}
        )
        await self.kit.bus.flush()

    async def stop(self) -> None:
        await self.ep.on_close(self.authed)
        await self.socket.stop()
        for t in self._tasks:
            t.cancel()


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    kit = await Kit().start()
    harness = Harness(kit)
    await harness.start()
    yield harness
    await harness.stop()
    await kit.stop()


async def test_frames_held_by_a_join_are_released_before_the_next_reply(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """join_session then edit back to back: session_joined, the held edit v6, then ack v7."""

    async def edit_io(frame: ClientFrame, member: Any, data: Any) -> str:
        return frame_text("ack", {"version": 7, "position": 0}, id=frame.id)

    monkeypatch.setattr(h.ep, "_edit_io", edit_io)
    h.gate.clear()  # the service is slow to answer the join
    await h.send({"type": "join_session", "id": "j", "data": {"sessionId": "s"}})
    edit = {"operation": "insert", "position": 0, "content": "x", "version": 5}
    await h.send({"type": "edit", "id": "e", "data": edit})
    while not h.kit.fanout.receivers(subjects.collab_live(CTX, "s")):
        await h.kit.bus.changed(1)  # the member is attached before the document is read
    await h.live_edit(6)  # held: the join is under way
    await h.replies.put(CollabReply(content="abcde", version=5, participants=[]))
    h.gate.set()
    sent = [await h.socket.next() for _ in range(3)]
    assert [(f["type"], f["data"].get("version")) for f in sent] == [
        ("session_joined", None),
        ("edit", 6),
        ("ack", 7),
    ]


async def test_a_failed_join_still_releases_and_a_snapshot_drops_what_it_contains(
    h: Harness,
) -> None:
    await h.replies.put(CollabReply(content="ab", version=2, participants=[]))
    await h.send({"type": "join_session", "id": "j", "data": {"sessionId": "s"}})
    assert (await h.socket.next())["type"] == "session_joined"
    member = h.ep._joined[h.authed.id]["s"]
    assert member.gate.holds == 0
    h.gate.clear()
    await h.send({"type": "snapshot", "id": "s1", "data": {}})
    assert member.gate.holds == 1
    await h.live_edit(4)  # in the snapshot: dropped
    await h.live_edit(5)  # after it: follows it
    await h.replies.put(CollabReply(content="abcd", version=4))
    h.gate.set()
    sent = [await h.socket.next() for _ in range(2)]
    assert [(f["type"], f["data"].get("version")) for f in sent] == [("snapshot", 4), ("edit", 5)]
    assert member.gate.holds == 0
    await h.replies.put(CollabReply(error="not_found", message="no such session"))
    await h.send({"type": "join_session", "id": "j2", "data": {"sessionId": "t"}})
    err = await h.socket.next()
    assert (err["type"], err["id"], err["data"]["code"]) == ("error", "j2", "not_found")
    assert "t" not in h.ep._joined[h.authed.id]
