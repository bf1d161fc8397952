"""The collaboration service in-process against a real nats-server, with failures injected.

Atomic split deletes, re-broadcast of edits logged but never broadcast, deadline honesty and
background loops that survive a failed round.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from ops.natsd import NatsServer
from ops.streams import ensure_streams
from services.collaboration import service as service_mod
from services.collaboration import store as store_mod
from services.collaboration.service import CollabService, _Slot
from shared import natsio, subjects
from shared.config import load_settings
from shared.natsio import replay
from shared.schemas.commands import EditCommand, Origin
from shared.schemas.events import EditApplied, decode_event
from shared.timefmt import now_ms

pytestmark = pytest.mark.integration

CTX, SESSION = "ctx", "s"
KEY = (CTX, SESSION)


class FakeMsg:
    """A command as the work queue hands it over; records how it was settled."""

    def __init__(self, cmd: EditCommand) -> None:
        self.data = json.dumps(
            {
                "requestId": cmd.requestId,
                "contextId": cmd.contextId,
                "sessionId": cmd.sessionId,
                "origin": {
                    "gatewayId": cmd.origin.gatewayId,
                    "connectionId": cmd.origin.connectionId,
                    "userId": cmd.origin.userId,
                    "userName": cmd.origin.userName,
                },
                "operation": cmd.operation,
                "position": cmd.position,
                "version": cmd.version,
                "content": cmd.content,
                "length": cmd.length,
                "clientId": cmd.clientId,
                "deadline": cmd.deadline,
            }
        ).encode()
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")


def cmd(
    cid: str | None,
    operation: str,
    position: int,
    version: int,
    user: str = "alice",
    deadline_s: float = 5.0,
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
        deadline=now_ms() + int(deadline_s * 1000),
        **kw,
    )


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    await ensure_streams(conn.jetstream())
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def svc(nc: NATS) -> CollabService:
    return CollabService(load_settings({}), nc)


class Tap:
    """What the service publishes: edit broadcasts (by version) and command results."""

    def __init__(self) -> None:
        self.edits: list[int] = []
        self.results: list[dict[str, Any]] = []

    async def open(self, nc: NATS) -> None:
        async def on_live(msg: Any) -> None:
            frame = json.loads(msg.data)
            if frame["type"] == "edit":
                self.edits.append(frame["data"]["version"])

        async def on_result(msg: Any) -> None:
            self.results.append(json.loads(msg.data))

        await nc.subscribe(subjects.collab_live(CTX, SESSION), cb=on_live)
        await nc.subscribe(subjects.gateway_replies("gw"), cb=on_result)
        await nc.flush()

    async def settle(self, nc: NATS) -> None:
        await nc.flush()
        await asyncio.sleep(0.05)


@pytest.fixture
async def tap(nc: NATS) -> Tap:
    t = Tap()
    await t.open(nc)
    return t


async def run(svc: CollabService, c: EditCommand) -> FakeMsg:
    msg = FakeMsg(c)
    await svc._run(KEY, svc._slot(KEY), msg, c)  # type: ignore[arg-type]
    return msg


async def logged(nc: NATS) -> list[EditApplied]:
    out = []
    async for m in replay(
        nc.jetstream(), subjects.EVENTS_STREAM, subjects.collab_edits(CTX, SESSION)
    ):
        ev = decode_event(m.data)
        assert isinstance(ev, EditApplied)
        out.append(ev)
    return out


async def split_delete_setup(svc: CollabService) -> EditCommand:
    """'abcdef' (v1), bob's concurrent 'X' inside it (v2): carol's delete of 'bcde' on v1
    splits around the X."""
    assert (await run(svc, cmd("a1", "insert", 0, 0, content="abcdef"))).settled == ["ack"]
    assert (await run(svc, cmd("b1", "insert", 3, 1, user="bob", content="X"))).settled == ["ack"]
    return cmd("c1", "delete", 1, 1, user="carol", length=4)


def spy_append(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[int], BaseException | None]
) -> list[list[tuple[str, bytes]]]:
    """Record every atomic batch; ``fail(n)`` may raise after (or instead of) the n-th one."""
    calls: list[list[tuple[str, bytes]]] = []
    real = natsio.append_atomic  # what the store calls

    async def spy(
        nc: NATS, subject: str, items: list[tuple[str, bytes]], *a: Any, **kw: Any
    ) -> int:
        calls.append(items)
        exc = fail(len(calls))
        if isinstance(exc, _Before):
            raise exc.exc
        first = await real(nc, subject, items, *a, **kw)
        if exc is not None:
            raise exc
        return first

    monkeypatch.setattr(store_mod, "append_atomic", spy)
    return calls


class _Before(Exception):
    """Fail the batch before it is sent."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def test_a_split_delete_is_one_atomic_batch(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    delete = await split_delete_setup(svc)
    calls = spy_append(monkeypatch, lambda n: None)
    msg = await run(svc, delete)
    assert msg.settled == ["ack"] and len(calls) == 1 and len(calls[0]) == 2
    events = await logged(nc)
    assert [(e.version, e.operation, e.part) for e in events[2:]] == [
        (3, "delete", 0),
        (4, "delete", 1),
    ]
    await tap.settle(nc)
    assert tap.edits == [1, 2, 3, 4]
    assert tap.results[-1]["ok"] == {"version": 4, "position": 4, "parts": 2}
    state = svc._slots[KEY].state
    assert state is not None and state.doc.content == "aXf"


async def test_a_refused_split_delete_stores_nothing_and_is_applied_whole_when_redelivered(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    delete = await split_delete_setup(svc)
    spy_append(monkeypatch, lambda n: _Before(nats.errors.TimeoutError()) if n == 1 else None)
    assert (await run(svc, delete)).settled == ["nak"]
    assert len(await logged(nc)) == 2  # neither part
    assert (await run(svc, delete)).settled == ["ack"]
    assert [e.version for e in await logged(nc)] == [1, 2, 3, 4]
    await tap.settle(nc)
    assert tap.results[-1]["ok"] == {"version": 4, "position": 4, "parts": 2}


async def test_a_batch_stored_but_unanswered_is_acked_whole_and_broadcast_on_redelivery(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    delete = await split_delete_setup(svc)
    spy_append(monkeypatch, lambda n: nats.errors.TimeoutError() if n == 1 else None)
    assert (await run(svc, delete)).settled == ["nak"]  # stored, but the answer was lost
    await tap.settle(nc)
    assert tap.edits == [1, 2]
    assert (await run(svc, delete)).settled == ["ack"]  # the dedup index answers it
    assert [e.version for e in await logged(nc)] == [1, 2, 3, 4]
    await tap.settle(nc)
    assert tap.edits == [1, 2, 3, 4]  # both parts broadcast after all
    assert tap.results[-1]["ok"] == {"version": 4, "position": 4, "parts": 2}


async def test_an_edit_without_id_stored_but_unanswered_is_stored_once_on_redelivery(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No client id: the command's request id keeps Nats-Msg-Id and the dedup key stable."""
    delete = await split_delete_setup(svc)
    delete = msgspec.structs.replace(delete, clientId=None)
    spy_append(monkeypatch, lambda n: nats.errors.TimeoutError() if n == 1 else None)
    assert (await run(svc, delete)).settled == ["nak"]  # stored, but the answer was lost
    assert (await run(svc, delete)).settled == ["ack"]  # the redelivery finds it
    assert [e.version for e in await logged(nc)] == [1, 2, 3, 4]
    await tap.settle(nc)
    assert tap.results[-1]["ok"] == {"version": 4, "position": 4, "parts": 2}


async def test_a_one_part_edit_without_id_is_stored_once_on_redelivery(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = natsio.append_one
    calls = 0

    async def lost_answer(*a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        ack = await real(*a, **kw)
        if calls == 1:
            raise nats.errors.TimeoutError
        return ack

    monkeypatch.setattr(store_mod, "append_one", lost_answer)
    insert = cmd(None, "insert", 0, 0, content="hello")
    assert (await run(svc, insert)).settled == ["nak"]
    assert (await run(svc, insert)).settled == ["ack"]
    assert [(e.version, e.content) for e in await logged(nc)] == [(1, "hello")]
    await tap.settle(nc)
    assert tap.results[-1]["ok"] == {"version": 1, "position": 0, "parts": 1}


async def test_an_undecodable_event_in_a_document_is_skipped_and_editing_goes_on(
    svc: CollabService, nc: NATS, tap: Tap
) -> None:
    assert (await run(svc, cmd("a1", "insert", 0, 0, content="ab"))).settled == ["ack"]
    garbage = b'{"type":"collab.edit","version":"x"}'
    await nc.jetstream().publish(subjects.collab_edits(CTX, SESSION), garbage)
    # The service's view is behind the subject now: a conflict, a reload past the garbage.
    assert (await run(svc, cmd("a2", "insert", 2, 1, content="c"))).settled == ["ack"]
    assert svc._slots[KEY].state is not None and svc._slots[KEY].state.doc.content == "abc"
    svc._slots[KEY].state = None  # a fresh load reads past it too
    assert (await run(svc, cmd("a3", "insert", 3, 2, content="d"))).settled == ["ack"]
    await tap.settle(nc)
    assert tap.results[-1]["ok"]["version"] == 3


async def test_a_duplicate_batch_reloads_and_answers_from_the_log(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process stored the edit (a crash before its broadcast): BATCH_DUPLICATE_ID."""
    other = CollabService(load_settings({}), nc)
    c = cmd("x1", "insert", 0, 0, content="hi")

    async def crash(ev: Any, sender: str) -> None:
        raise RuntimeError("crashed before the broadcast")

    monkeypatch.setattr(other, "_broadcast_edit", crash)
    assert (await run(other, c)).settled == ["nak"]
    stale = svc._slot(KEY).state = await svc.store.load(*KEY)
    stale.doc.restore("", 0)  # a stale view: it believes the edit is not there
    stale.last_seq = 0
    again = cmd("x1", "insert", 0, 0, content="hi")
    assert (await run(svc, again)).settled == ["ack"]
    await tap.settle(nc)
    assert tap.edits == [1] and tap.results[-1]["ok"] == {"version": 1, "position": 0, "parts": 1}
    assert [e.version for e in await logged(nc)] == [1]


async def test_a_refused_batch_reloads_and_answers_the_split_delete_from_the_log(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This process's view is at v2 while another one stored the split delete and crashed."""
    delete = await split_delete_setup(svc)
    other = CollabService(load_settings({}), nc)

    async def crash(ev: Any, sender: str) -> None:
        raise RuntimeError("crashed before the broadcast")

    monkeypatch.setattr(other, "_broadcast_edit", crash)
    assert (await run(other, delete)).settled == ["nak"]
    calls = spy_append(monkeypatch, lambda n: None)
    assert (await run(svc, delete)).settled == ["ack"]
    assert len(calls) == 1  # refused whole; the reloaded view found it stored
    assert [e.version for e in await logged(nc)] == [1, 2, 3, 4]
    await tap.settle(nc)
    assert tap.edits == [1, 2, 3, 4]
    assert tap.results[-1]["ok"] == {"version": 4, "position": 4, "parts": 2}


async def test_an_edit_logged_but_never_broadcast_is_broadcast_once_by_the_next_process(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = CollabService(load_settings({}), nc)

    async def crash(ev: Any, sender: str) -> None:
        raise RuntimeError("crashed before the broadcast")

    monkeypatch.setattr(crashed, "_broadcast_edit", crash)
    assert (await run(crashed, cmd("e1", "insert", 0, 0, content="x"))).settled == ["nak"]
    await tap.settle(nc)
    assert tap.edits == [] and tap.results == []
    # the redelivered command, in a fresh process: logged already, so broadcast and acked
    assert (await run(svc, cmd("e1", "insert", 0, 0, content="x"))).settled == ["ack"]
    await tap.settle(nc)
    assert tap.edits == [1] and tap.results[-1]["ok"]["version"] == 1
    # re-sent once more: this process has broadcast it, so only the ack
    assert (await run(svc, cmd("e1", "insert", 0, 0, content="x"))).settled == ["ack"]
    await tap.settle(nc)
    assert tap.edits == [1] and len(tap.results) == 2


async def test_an_expired_command_already_logged_is_broadcast_but_not_answered(
    nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = CollabService(load_settings({}), nc)

    async def crash(ev: Any, sender: str) -> None:
        raise RuntimeError("crashed before the broadcast")

    monkeypatch.setattr(crashed, "_broadcast_edit", crash)
    assert (await run(crashed, cmd("e1", "insert", 0, 0, content="x"))).settled == ["nak"]
    late = CollabService(load_settings({}), nc)
    expired = cmd("e1", "insert", 0, 0, content="x", deadline_s=-1)
    assert (await run(late, expired)).settled == ["ack"]
    await tap.settle(nc)
    assert tap.edits == [1] and tap.results == []  # the gateway answered `unavailable` already
    # an expired command not in the log is dropped unapplied
    assert (await run(late, cmd("e2", "insert", 0, 1, content="y", deadline_s=-1))).settled == [
        "ack"
    ]
    assert [e.version for e in await logged(nc)] == [1]


async def test_the_deadline_is_checked_after_waiting_for_the_document(
    svc: CollabService, nc: NATS, tap: Tap
) -> None:
    slot = svc._slot(KEY)
    await slot.lock.acquire()  # another command holds the document
    c = cmd("d1", "insert", 0, 0, content="late", deadline_s=0.1)
    task = asyncio.create_task(run(svc, c))
    await asyncio.sleep(0.3)  # past the deadline while waiting
    slot.lock.release()
    msg = await task
    assert msg.settled == ["ack"]
    await tap.settle(nc)
    assert await logged(nc) == [] and tap.results == [] and tap.edits == []


async def test_the_append_gets_what_is_left_of_the_deadline(
    svc: CollabService, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeouts: list[float] = []
    real = svc.store.append_edit

    async def spy(events: Any, expected: int, timeout: float) -> int:
        timeouts.append(timeout)
        return await real(events, expected, timeout)

    monkeypatch.setattr(svc.store, "append_edit", spy)
    await run(svc, cmd("t1", "insert", 0, 0, content="x", deadline_s=2.0))
    assert len(timeouts) == 1 and 1.0 < timeouts[0] <= 2.0


async def test_a_failed_reply_publish_naks_and_the_document_goes_on(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nc.publish
    failed: list[str] = []

    async def publish(subject: str, payload: bytes = b"", **kw: Any) -> None:
        if subject == subjects.gateway_replies("gw") and not failed:
            failed.append(subject)
            raise nats.errors.OutboundBufferLimitError
        await real(subject, payload, **kw)

    monkeypatch.setattr(nc, "publish", publish)
    first, second = cmd("p1", "insert", 0, 0, content="a"), cmd("p2", "insert", 0, 1, content="b")
    slot = svc._slot(KEY)
    m1, m2 = FakeMsg(first), FakeMsg(second)
    slot.queue.extend([(m1, first), (m2, second)])  # type: ignore[list-item]
    await svc._work(KEY, slot)
    assert m1.settled == ["nak"] and m2.settled == ["ack"] and slot.worker is None
    # the redelivery is answered from the dedup index
    assert (await run(svc, first)).settled == ["ack"]
    await tap.settle(nc)
    assert [r["ok"]["version"] for r in tap.results] == [2, 1]


async def test_the_command_loop_and_the_ticker_survive_a_failed_round(
    svc: CollabService, nc: NATS, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_mod, "LOOP_BACKOFF_S", 0.01)
    c = cmd("l1", "insert", 0, 0, content="z")
    rounds: list[int] = []

    class Pull:
        async def fetch(self, batch: int, timeout: float) -> list[Any]:
            rounds.append(1)
            if len(rounds) == 1:
                raise nats.errors.OutboundBufferLimitError
            if len(rounds) == 2:
                return [FakeMsg(c)]
            await asyncio.sleep(timeout)
            return []

    svc._psub = Pull()  # type: ignore[assignment]
    loop = asyncio.create_task(svc._command_loop())
    try:
        async with asyncio.timeout(5):
            while not tap.results:
                await tap.settle(nc)
        assert tap.results[0]["ok"]["version"] == 1 and not loop.done()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    ticks: list[int] = []

    async def tick(now: float, uptime: float) -> None:
        ticks.append(1)
        raise nats.errors.OutboundBufferLimitError

    svc.settings = load_settings({"AG_HEARTBEAT_S": "0.02"})
    monkeypatch.setattr(svc.presence, "tick", tick)
    ticker = asyncio.create_task(svc._ticker())
    try:
        async with asyncio.timeout(5):
            while len(ticks) < 3:
                await asyncio.sleep(0.02)
        assert not ticker.done()
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)


def test_slot_starts_empty() -> None:
    slot = _Slot()
    assert slot.state is None and not slot.queue and slot.worker is None
