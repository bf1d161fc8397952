"""The collaboration service's documents on the in-memory bus, with failures injected: atomic
split deletes, answers lost after the append, edits logged but never broadcast, deadlines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from services.collaboration.service import CollabService
from shared import subjects
from shared.bus.memory import MemoryBus
from shared.config import load_settings
from shared.eventlog import decode_logged
from shared.schemas.commands import EditCommand, Origin
from shared.schemas.events import EditApplied
from shared.schemas.wire import encode
from shared.timefmt import now_ms
from tests.bus_support import FaultyBus, Tap, lost_answer

CTX, SESSION = "ctx", "s"


class Clock:
    def __init__(self) -> None:
        self.now = now_ms()  # the store's dedup horizon is wall-clock time: start there

    def __call__(self) -> int:
        return self.now


def cmd(
    cid: str | None,
    operation: str,
    position: int,
    version: int,
    user: str = "alice",
    deadline_ms: int | None = None,
    **kw: Any,
) -> EditCommand:
    return EditCommand(
        requestId=uuid.uuid4().hex,
        contextId=CTX,
        sessionId=SESSION,
        origin=Origin("gw", f"conn-{user}", user, user.title()),
        operation=operation,
        position=position,
        version=version,
        clientId=cid,
        deadline=now_ms() + 5000 if deadline_ms is None else deadline_ms,
        **kw,
    )


class Harness:
    def __init__(self, bus: MemoryBus, clock: Clock) -> None:
        self.bus = bus
        self.clock = clock
        self.tap = Tap()
        self.services: list[CollabService] = []

    async def service(self) -> CollabService:
        svc = CollabService(load_settings({"AG_HEARTBEAT_S": "60"}), self.bus)
        svc.worker.clock = self.clock
        self.services.append(svc)
        await svc.start()
        return svc

    async def send(self, c: EditCommand) -> None:
        await self.bus.submit(subjects.collab_commands(CTX, SESSION), encode(c))

    def results(self) -> list[dict[str, Any]]:
        return self.tap.of("ag.reply")

    def edits(self) -> list[int]:
        return [f["data"]["version"] for f in self.tap.of("ag.live") if f["type"] == "edit"]

    async def logged(self) -> list[EditApplied]:
        out = []
        for e in await self.bus.read(subjects.collab_edits(CTX, SESSION)):
            ev = decode_logged(e.data, e.seq, e.subject, "test")
            if isinstance(ev, EditApplied):
                out.append(ev)
        return out

    async def settled(self) -> None:
        """Every command handled (acked or waiting for a redelivery) and published."""
        await self.tap.until(
            lambda: not self.bus._work or all(w.out_until is None for w in self.bus._work)
        )
        await self.bus.flush()


@pytest.fixture
async def kit() -> AsyncIterator[Harness]:
    h = Harness(MemoryBus(), Clock())
    await h.tap.watch(h.bus, subjects.gateway_replies("gw"), subjects.collab_live(CTX, SESSION))
    yield h
    for svc in h.services:
        await svc.stop()


async def split_delete_setup(h: Harness) -> EditCommand:
    """'abcdef' (v1), bob's concurrent 'X' inside it (v2): carol's delete of 'bcde' on v1
    splits around the X."""
    await h.send(cmd("a1", "insert", 0, 0, content="abcdef"))
    await h.send(cmd("b1", "insert", 3, 1, user="bob", content="X"))
    await h.tap.until(lambda: len(h.results()) == 2)
    return cmd("c1", "delete", 1, 1, user="carol", length=4)


async def test_a_split_delete_is_one_atomic_batch(kit: Harness) -> None:
    bus = FaultyBus(lambda n: None)
    kit.bus = bus
    await kit.tap.watch(bus, subjects.gateway_replies("gw"), subjects.collab_live(CTX, SESSION))
    await kit.service()
    await kit.send(await split_delete_setup(kit))
    await kit.tap.until(lambda: len(kit.results()) == 3)
    assert len(bus.batches[-1]) == 2
    assert kit.results()[-1]["ok"] == {"version": 4, "position": 4, "parts": 2}


@pytest.mark.parametrize("client_id", ["c1", None])
async def test_a_split_delete_stored_but_unanswered_is_acked_whole_and_broadcast_on_redelivery(
    kit: Harness, client_id: str | None
) -> None:
    bus = FaultyBus(lost_answer(3))
    kit.bus = bus
    await kit.tap.watch(bus, subjects.gateway_replies("gw"), subjects.collab_live(CTX, SESSION))
    await kit.service()
    delete = msgspec.structs.replace(await split_delete_setup(kit), clientId=client_id)
    await kit.send(delete)
    await kit.tap.until(lambda: len(kit.results()) == 3)  # the redelivery finds it stored
    assert [e.version for e in await kit.logged()] == [1, 2, 3, 4]
    assert kit.results()[-1]["ok"] == {"version": 4, "position": 4, "parts": 2}
    await kit.tap.until(lambda: kit.edits() == [1, 2, 3, 4])  # both parts broadcast after all


async def test_a_one_part_edit_without_id_is_stored_once_on_redelivery(kit: Harness) -> None:
    bus = FaultyBus(lost_answer(1))
    kit.bus = bus
    await kit.tap.watch(bus, subjects.gateway_replies("gw"), subjects.collab_live(CTX, SESSION))
    await kit.service()
    await kit.send(cmd(None, "insert", 0, 0, content="hello"))
    await kit.tap.until(lambda: len(kit.results()) == 1)
    assert [(e.version, e.content) for e in await kit.logged()] == [(1, "hello")]
    assert kit.results()[0]["ok"] == {"version": 1, "position": 0, "parts": 1}


async def test_an_undecodable_event_in_a_document_is_skipped_and_editing_goes_on(
    kit: Harness,
) -> None:
    svc = await kit.service()
    await kit.send(cmd("a1", "insert", 0, 0, content="ab"))
    await kit.tap.until(lambda: len(kit.results()) == 1)
    garbage = b'{"type":"collab.edit","version":"x"}'
    await kit.bus.append(subjects.collab_edits(CTX, SESSION), garbage, msg_id="garbage")
    # The service's view is behind the subject now: a conflict, a reload past the garbage.
    await kit.send(cmd("a2", "insert", 2, 1, content="c"))
    await kit.tap.until(lambda: len(kit.results()) == 2)
    async with svc.worker.holding((CTX, SESSION)) as state:
        assert state.doc.content == "abc"
    svc.worker.forget((CTX, SESSION))  # a fresh load reads past it too
    await kit.send(cmd("a3", "insert", 3, 2, content="d"))
    await kit.tap.until(lambda: len(kit.results()) == 3)
    assert kit.results()[-1]["ok"]["version"] == 3


async def crashed_before_broadcast(kit: Harness, c: EditCommand) -> None:
    """A process logs ``c`` and dies before it broadcasts or answers."""
    svc = await kit.service()

    async def crash(*_: Any) -> None:
        raise RuntimeError("crashed before the broadcast")

    svc.docs._broadcast = crash  # type: ignore[method-assign]
    await kit.send(c)
    await kit.tap.until(lambda: bool(kit.bus._log))
    await kit.settled()
    await svc.stop()
    kit.services.remove(svc)


async def test_an_edit_logged_but_never_broadcast_is_broadcast_once_by_the_next_process(
    kit: Harness,
) -> None:
    await crashed_before_broadcast(kit, cmd("e1", "insert", 0, 0, content="x"))
    assert kit.edits() == [] and kit.results() == []
    await kit.service()  # the redelivered command: logged already, so broadcast and acked
    await kit.tap.until(lambda: len(kit.results()) == 1)
    assert kit.edits() == [1] and kit.results()[0]["ok"]["version"] == 1
    await kit.send(cmd("e1", "insert", 0, 0, content="x"))  # re-sent: only the ack this time
    await kit.tap.until(lambda: len(kit.results()) == 2)
    await kit.bus.flush()
    assert kit.edits() == [1] and [e.version for e in await kit.logged()] == [1]


async def test_an_expired_command_already_logged_is_broadcast_but_not_answered(
    kit: Harness,
) -> None:
    await crashed_before_broadcast(kit, cmd("e1", "insert", 0, 0, content="x"))
    kit.clock.now += 10_000  # past the deadline when it comes back
    await kit.service()
    await kit.tap.until(lambda: kit.edits() == [1])
    await kit.settled()
    assert kit.results() == []  # the gateway answered `unavailable` already
    # an expired command not in the log is dropped unapplied
    await kit.send(cmd("e2", "insert", 0, 1, content="y"))
    await kit.settled()
    assert [e.version for e in await kit.logged()] == [1] and kit.results() == []


async def test_the_deadline_is_checked_after_waiting_for_the_document(kit: Harness) -> None:
    svc = await kit.service()
    async with svc.worker.holding((CTX, SESSION)):  # another command holds the document
        late = kit.clock.now + 100
        await kit.send(cmd("d1", "insert", 0, 0, content="late", deadline_ms=late))
        await kit.tap.until(lambda: bool(kit.bus._work) and kit.bus._work[0].deliveries > 0)
        kit.clock.now += 300  # past the deadline while waiting
    await kit.settled()
    assert await kit.logged() == [] and kit.results() == [] and kit.edits() == []


async def test_the_append_gets_what_is_left_of_the_deadline(kit: Harness) -> None:
    timeouts: list[float] = []

    class Spy(MemoryBus):
        async def append_batch(self, *a: Any, **kw: Any) -> int:
            timeouts.append(kw["timeout"])
            return await super().append_batch(*a, **kw)

        async def append_chain(self, *a: Any, **kw: Any) -> list[int]:
            timeouts.append(kw["timeout"])
            return await super().append_chain(*a, **kw)

    kit.bus = Spy()
    await kit.tap.watch(kit.bus, subjects.gateway_replies("gw"))
    await kit.service()
    await kit.send(cmd("t1", "insert", 0, 0, content="x", deadline_ms=kit.clock.now + 2000))
    await kit.tap.until(lambda: len(kit.results()) == 1)
    assert timeouts == [2.0]


async def test_a_failed_reply_naks_that_command_and_the_document_goes_on(kit: Harness) -> None:
    failed: list[str] = []

    class Flaky(MemoryBus):
        async def publish(self, subject: str, data: bytes, headers: Any = None) -> None:
            if subject == subjects.gateway_replies("gw") and not failed:
                failed.append(subject)
                raise ConnectionError("outbound buffer full")
            await super().publish(subject, data, headers)

    kit.bus = Flaky()
    await kit.tap.watch(kit.bus, subjects.gateway_replies("gw"))
    svc = await kit.service()
    async with svc.worker.holding((CTX, SESSION)):  # both commands go in one batch
        await kit.send(cmd("p1", "insert", 0, 0, content="a"))
        await kit.send(cmd("p2", "insert", 0, 1, content="b"))
        await kit.tap.until(
            lambda: all(w.deliveries for w in kit.bus._work) and len(kit.bus._work) == 2
        )
    await kit.tap.until(lambda: len(kit.results()) == 2)  # p2 at once, p1 from the dedup index
    assert sorted(r["ok"]["version"] for r in kit.results()) == [1, 2]
    assert [e.version for e in await kit.logged()] == [1, 2]


async def test_a_stale_view_reloads_and_answers_the_split_delete_from_the_log(
    kit: Harness,
) -> None:
    """This process's view is at v2 while another one stored the split delete and crashed."""
    bus = FaultyBus(lambda n: None)
    kit.bus = bus
    await kit.tap.watch(bus, subjects.gateway_replies("gw"), subjects.collab_live(CTX, SESSION))
    first = await kit.service()
    delete = await split_delete_setup(kit)
    async with first.worker.holding((CTX, SESSION)) as state:
        stale = await first.store.load(CTX, SESSION)
        assert stale.doc.version == state.doc.version == 2
    await first.stop()
    kit.services.remove(first)
    await crashed_before_broadcast(kit, delete)
    tried = len(bus.batches)
    late = CollabService(load_settings({"AG_HEARTBEAT_S": "60"}), bus)
    late.worker.clock = kit.clock
    late.worker.preload({(CTX, SESSION): stale})
    kit.services.append(late)
    await late.start()  # the redelivered delete meets the stale view
    await kit.tap.until(lambda: len(kit.results()) == 3)
    assert len(bus.batches) == tried + 1  # refused whole; the reloaded view found it stored
    assert [e.version for e in await kit.logged()] == [1, 2, 3, 4]
    assert kit.results()[-1]["ok"] == {"version": 4, "position": 4, "parts": 2}
    await kit.tap.until(lambda: kit.edits() == [1, 2, 3, 4])


async def test_the_ticker_survives_a_failed_round(
    kit: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = await kit.service()
    ticks = asyncio.Queue[int]()

    async def tick(now: float, uptime: float) -> None:
        ticks.put_nowait(1)
        raise ConnectionError("NATS away")

    svc.settings = load_settings({"AG_HEARTBEAT_S": "0.01"})
    monkeypatch.setattr(svc.presence, "tick", tick)
    ticker = asyncio.create_task(svc._tick_loop())
    try:
        for _ in range(3):
            await asyncio.wait_for(ticks.get(), 5)
        assert not ticker.done()
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
