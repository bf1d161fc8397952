"""A seeded multi-client editing session through the real service, gateways and sockets.

Five clients, spread over two gateways, type into one document with random pauses. Each runs the
client-side OT of ``ops.sim.editor.Editor`` (one edit in flight, later ones buffered, incoming
edits transformed). Two of them drop their connection right after sending an edit, reconnect
(to the other gateway), re-send the unacknowledged edit with the same id, and resync from a
snapshot. At the end every client holds the server's text and version, and the log holds each
edit part exactly once. ``AG_SIM_SEED`` picks another seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from ops.sim.editor import Editor, op_of, random_op
from shared import subjects
from shared.schemas.events import EditApplied, decode_event
from tests.conftest import T
from tests.helpers import Stack, log_entries, token

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("AG_SIM_SEED", "20260105"))
PATH = "/api/collaboration/ws"


class SimClient:
    def __init__(
        self, stack: Stack, user: str, context: str, session: str, rng: random.Random
    ) -> None:
        self.stack, self.user, self.context, self.session, self.rng = (
            stack,
            user,
            context,
            session,
            rng,
        )
        self.gateway = rng.randrange(2)
        self.editor = Editor()
        self.sent: dict[str, dict[str, Any]] = {}  # every edit frame sent, by id
        self.acked: dict[str, int] = {}
        self.inflight_id: str | None = None
        self.errors: list[dict[str, Any]] = []
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self.reconnects = 0

    async def _open(self) -> None:
        url = self.stack.url(
            PATH, gateway=self.gateway, token=token(self.user, self.context), contextId=self.context
        )
        self.ws = await websockets.connect(url, max_size=None)
        await self._send("join_session", {"sessionId": self.session}, "join")
        joined = await self._until("session_joined")
        self.editor.reset(
            joined["data"]["document"]["content"], joined["data"]["document"]["version"]
        )

    async def _send(self, type: str, data: dict[str, Any], cid: str | None = None) -> None:
        await self.ws.send(json.dumps({"type": type, "id": cid, "data": data}))

    async def _until(self, type: str, cid: str | None = None) -> dict[str, Any]:
        """Read frames (ignoring the rest) until one of ``type`` (with id ``cid``) arrives."""
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), T(15)))
            if frame["type"] == "error":
                self.errors.append(frame)
            if frame["type"] == type and (cid is None or frame.get("id") == cid):
                return dict(frame)

    async def _edit(self, data: dict[str, Any] | None) -> None:
        if data is None:
            return
        cid = f"{self.user}-{len(self.sent)}"
        self.sent[cid] = data
        self.inflight_id = cid
        await self._send("edit", data, cid)

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            data = frame.get("data") or {}
            if frame["type"] == "edit":
                self.editor.remote(op_of(data), data["version"])
            elif frame["type"] == "ack" and frame["id"] == self.inflight_id:
                self.acked[frame["id"]] = data["version"]
                self.inflight_id = None
                await self._edit(self.editor.ack(data["version"]))
            elif frame["type"] == "error":
                self.errors.append(frame)
            self.changed.set()

    async def _reconnect(self) -> None:
        """Drop the socket with an edit unacknowledged; re-send it with its id; resync."""
        assert self.reader is not None and self.inflight_id is not None
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.ws.close()
        self.reconnects += 1
        self.gateway = 1 - self.gateway
        cid = self.inflight_id
        await self._open()
        await self._send("edit", self.sent[cid], cid)
        self.acked[cid] = (await self._until("ack", cid))["data"]["version"]
        self.inflight_id = None
        await self._send("snapshot", {}, "resync")
        snap = await self._until("snapshot", "resync")
        self.editor.reset(snap["data"]["content"], snap["data"]["version"])  # unsent edits dropped
        self.reader = asyncio.create_task(self._read())

    async def run(self, edits: int, drop_after: set[int]) -> None:
        await self._open()
        self.reader = asyncio.create_task(self._read())
        for n in range(edits):
            await asyncio.sleep(self.rng.uniform(0, 0.03))  # think time, part of the scenario
            if len(self.editor.buffer) < 3:
                await self._edit(self.editor.local(random_op(self.rng, self.editor.text, 300)))
            if n in drop_after and self.inflight_id is not None:
                await self._reconnect()
        while not self.editor.synced:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), T(15))

    async def catch_up(self, version: int) -> None:
        while self.editor.version < version:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), T(15))

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        await self.ws.close()


async def logged_edits(stack: Stack, context: str, session: str) -> list[EditApplied]:
    import nats

    nc = await nats.connect(stack.nats_url)
    try:
        subject = subjects.collab_edits(context, session)
        out = []
        for msg in await log_entries(nc, subject):
            ev = decode_event(msg.data)
            assert isinstance(ev, EditApplied)
            out.append(ev)
        return out
    finally:
        await nc.close()


async def test_seeded_clients_converge_and_every_edit_is_applied_once(
    make_stack: Callable[..., Any],
) -> None:
    stack: Stack = await make_stack(
        chat=False, gateways=2, services=["collaboration"], env={"AG_SNAPSHOT_EVERY": "25"}
    )
    rng = random.Random(SEED)
    context, session = "sim-" + uuid.uuid4().hex[:6], "doc"
    clients = [
        SimClient(stack, f"u{i}", context, session, random.Random(rng.random())) for i in range(5)
    ]
    plans = [{5, 20}, {12}, set(), set(), set()]
    await asyncio.gather(*(c.run(40, plan) for c, plan in zip(clients, plans, strict=True)))

    probe = SimClient(stack, "probe", context, session, random.Random(0))
    await probe._open()
    final, version = probe.editor.text, probe.editor.version
    await probe.ws.close()
    for c in clients:
        await c.catch_up(version)
        await c.close()
    assert [c.errors for c in clients] == [[]] * 5
    assert sum(c.reconnects for c in clients) == 3
    for c in clients:
        assert (c.editor.version, c.editor.text) == (version, final), c.user

    events = await logged_edits(stack, context, session)
    assert [e.version for e in events] == list(range(1, version + 1))
    parts = Counter((e.userId, e.clientId, e.part) for e in events)
    assert max(parts.values()) == 1, [k for k, n in parts.items() if n > 1]
    sent = {(c.user, cid) for c in clients for cid in c.sent}
    assert {(u, cid) for u, cid, _ in parts} <= sent
    for c in clients:  # every edit was acknowledged, and its ack names a logged version
        assert set(c.acked) == set(c.sent)
        assert all(0 < v <= version for v in c.acked.values())
