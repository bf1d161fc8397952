"""The last line of defence: a worker that still writes after its partition lease lapsed.

Two chat workers in one process on a real nats-server. Worker A owns everything and posts m1;
then A "pauses" (its lease renewals and its consumer stop, its room state stays in memory, as
in a long GC pause or a frozen VM); its leases lapse and B takes the partition over and posts
m2. Then B pauses and A wakes up still believing it owns the room, with the room at seq 1: its
append of m3 carries the stale expected last subject sequence, NATS refuses it, A reloads the
room from the log and stores m3 as seq 3. Nothing is written twice, no seq is given twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from prometheus_client import REGISTRY

from services.chat.service import ChatService
from shared import subjects, tasks
from shared.config import load_settings
from shared.eventlog import decode_logged
from shared.partitions import chat_partition
from shared.schemas.commands import CommandResult, Origin, PostMessage
from shared.schemas.events import ChatMessagePosted
from shared.schemas.wire import encode
from shared.timefmt import now_ms
from tests.conftest import T

ROOM = "stale-room"


def post(cid: str) -> bytes:
    cmd = PostMessage(
        requestId=cid,
        contextId=ROOM,
        origin=Origin("gw", "conn", "alice", "Alice"),
        content=cid,
        messageType="text",
        clientId=cid,
        deadline=now_ms() + 10_000,
    )
    return encode(cmd)


def conflicts() -> float:
    labels = {"service": "chat", "outcome": "conflict"}
    return REGISTRY.get_sample_value("ag_commands_total", labels) or 0.0


async def pause(svc: ChatService, partition: int) -> None:
    """Stop renewing and consuming, keep the state: what a frozen process looks like."""
    await tasks.stop([svc.ownership._task])
    await tasks.stop([svc.worker._loops.pop(partition)])
    await svc.worker._queues.pop(partition).close()


async def test_a_stale_owner_is_stopped_by_the_expected_last_sequence(nats_bus: Any) -> None:
    settings = load_settings({"AG_HEARTBEAT_S": "60", "AG_COMMAND_TIMEOUT_S": "10"})
    bus = nats_bus
    acks: dict[str, int] = {}
    got = asyncio.Event()

    async def on_reply(msg: Any) -> None:
        result = msgspec.json.decode(msg.data, type=CommandResult)
        if result.ok is not None and result.clientId is not None:
            acks[result.clientId] = result.ok["seq"]
            got.set()

    await bus.subscribe(subjects.gateway_replies("gw"), on_reply)

    async def send(cid: str) -> int:
        got.clear()
        await bus.submit(subjects.chat_commands(ROOM), post(cid))
        async with asyncio.timeout(T(15)):
            while cid not in acks:
                await got.wait()
                got.clear()
        return acks[cid]

    p = chat_partition(ROOM, settings.partitions)
    a = ChatService(settings.replace(worker_id="a"), bus)
    b = ChatService(settings.replace(worker_id="b"), bus)
    await a.start()
    try:
        assert a.owns(ROOM)
        assert await send("m1") == 1
        await pause(a, p)

        await b.start()
        deadline = time.monotonic() + T(15)
        while not b.owns(ROOM):  # A's lease lapses (AG_LEASE_S), then B's round claims it
            assert time.monotonic() < deadline, "B never took the partition over"
            await b.ownership.step()
            await asyncio.sleep(0.2)  # polling a lease that lapses in NATS's own time
        assert await send("m2") == 2
        await b.worker.disown(p, wait_s=T(5))  # B pauses in turn

        before = conflicts()
        assert a.owns(ROOM)  # A still believes it, with the room at seq 1 in memory
        a.worker.own(p)
        assert await send("m3") == 3
        assert conflicts() > before
    finally:
        await b.stop()
        await a.stop()

    entries = await bus.read(subjects.chat_messages(ROOM))
    posted = [decode_logged(e.data, e.seq, e.subject, "test") for e in entries]
    stored = [(m.clientId, m.seq) for m in posted if isinstance(m, ChatMessagePosted)]
    assert stored == [("m1", 1), ("m2", 2), ("m3", 3)]
