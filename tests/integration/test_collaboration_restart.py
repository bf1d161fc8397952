"""The collaboration service restarted mid-session: documents come back from the log."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from typing import Any

import nats
import pytest

from shared import subjects
from shared.schemas.events import DocumentSnapshot, EditApplied, decode_event
from tests.helpers import Client, Stack, log_entries, start_service_ready, token

pytestmark = pytest.mark.integration

PATH = "/api/collaboration/ws"


async def connect(stack: Stack, user: str, context: str) -> Client:
    tok = token(user, context)
    c = await Client.connect(stack.url(PATH, token=tok, contextId=context), max_size=None)
    await c.expect("connected")
    return c


async def send_edit(c: Client, cid: str, **data: Any) -> dict[str, Any]:
    frame = await c.request({"type": "edit", "id": cid, "data": data}, "ack")
    return dict(frame["data"])


async def state(c: Client) -> tuple[str, int]:
    snap = await c.request({"type": "snapshot", "id": uuid.uuid4().hex[:8], "data": {}}, "snapshot")
    return snap["data"]["content"], snap["data"]["version"]


async def type_into(c: Client, prefix: str, count: int, version: int) -> int:
    """``count`` edits (inserts, a delete every third), each on the version the last ack gave."""
    for i in range(count):
        if i % 3 == 2:
            ack = await send_edit(
                c, f"{prefix}{i}", operation="delete", position=0, length=1, version=version
            )
        else:
            ack = await send_edit(
                c, f"{prefix}{i}", operation="insert", position=0, content=f"{i}😀", version=version
            )
        version = ack["version"]
    return version


async def restart(stack: Stack, sig: int = signal.SIGTERM) -> None:
    stack.services["collaboration"].stop(sig)
    await start_service_ready(stack, "collaboration")


@pytest.fixture
async def collab(make_stack: Callable[..., Any]) -> Stack:
    stack: Stack = await make_stack(
        chat=False, services=["collaboration"], env={"AG_SNAPSHOT_EVERY": "5"}
    )
    return stack


async def test_a_restart_rebuilds_the_same_text_and_version_and_keeps_editing(
    collab: Stack,
) -> None:
    c = "restart-" + uuid.uuid4().hex[:6]
    alice, bob = await connect(collab, "alice", c), await connect(collab, "bob", c)
    for x in (alice, bob):
        await x.request(
            {"type": "join_session", "id": "j", "data": {"sessionId": "s"}}, "session_joined"
        )
    version = await type_into(alice, "a", 12, 0)
    before = await state(alice)
    assert before[1] == version == 12
    await restart(collab, signal.SIGKILL)  # no orderly stop: everything must come from the log
    assert await state(bob) == before  # the sockets stayed: the gateway did not restart
    # a client that had not seen the last edits still edits on its old base version
    ack = await send_edit(bob, "b0", operation="insert", position=0, content="B", version=11)
    assert ack["version"] == 13
    assert (await state(alice))[0] == "B" + before[0]
    # a re-sent id from before the restart is recognised, not applied again
    assert (await send_edit(alice, "a11", operation="insert", position=0, content="x", version=0))[
        "version"
    ] == 12
    assert (await send_edit(alice, "a1", operation="insert", position=0, content="x", version=0))[
        "version"
    ] == 2
    assert (await state(alice))[1] == 13


async def delete_edits_up_to(stack: Stack, context: str, version: int) -> list[DocumentSnapshot]:
    """Remove the session's edit events up to ``version`` from the stream; return its snapshots."""
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        snaps = [
            ev
            for m in await log_entries(nc, subjects.collab_snapshots(context, "s"))
            if isinstance(ev := decode_event(m.data), DocumentSnapshot)
        ]
        for m in await log_entries(nc, subjects.collab_edits(context, "s")):
            ev = decode_event(m.data)
            assert isinstance(ev, EditApplied)
            if ev.version <= version:
                await js.delete_msg(subjects.EVENTS_STREAM, m.seq)
        return snaps
    finally:
        await nc.close()


async def test_a_rebuild_reads_only_the_last_two_snapshots_and_the_edits_after_them(
    collab: Stack,
) -> None:
    c = "snap-" + uuid.uuid4().hex[:6]
    alice = await connect(collab, "alice", c)
    await alice.request(
        {"type": "join_session", "id": "j", "data": {"sessionId": "s"}}, "session_joined"
    )
    await type_into(alice, "a", 13, 0)
    before = await state(alice)
    # Without the edits before the previous snapshot, a rebuild from the start of the log would
    # fail; one from the snapshots does not read them.
    snaps = await delete_edits_up_to(collab, c, 5)
    assert [(s.version, bool(s.editSeq), bool(s.previousSeq)) for s in snaps] == [
        (5, True, False),
        (10, True, True),
    ]
    await restart(collab)
    assert await state(alice) == before
    # the history reaches back to the previous snapshot: an edit made on version 7 still applies
    ack = await send_edit(alice, "late", operation="insert", position=0, content="!", version=7)
    assert ack["version"] == 14
    # Without the edits between the two snapshots, the newest one alone still rebuilds the text.
    await delete_edits_up_to(collab, c, 10)
    after = await state(alice)
    await restart(collab)
    assert await state(alice) == after
    old = await alice.request(
        {
            "type": "edit",
            "id": "old",
            "data": {"operation": "insert", "position": 0, "content": "x", "version": 7},
        },
        "error",
    )
    assert old["data"] == {"code": "version_mismatch", "version": 14}
    assert (await send_edit(alice, "new", operation="insert", position=0, content="x", version=11))[
        "version"
    ] == 15
