"""The NATS log tail on a real nats-server: bounded credit, no loss, and healing when the
server forgets its consumer or the delivery sequence skips."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from shared import subjects
from shared.bus import wire
from shared.bus.nats import NatsBus
from shared.bus.nats_tail import Tail
from shared.bus.port import Entry
from tests.conftest import T

N = 1200


@pytest.fixture
def bus(nats_bus: NatsBus) -> NatsBus:
    return nats_bus


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # a backlog many windows long, without writing a million events
    small = dataclasses.replace(Tail.CREDIT, window=100, chunk=30)
    monkeypatch.setattr(Tail, "CREDIT", small)


async def fill(bus: NatsBus, n: int, first: int = 0) -> None:
    acks = [
        await bus.js.publish(
            f"ag.evt.chat.c{i % 7}.message", str(i).encode(), stream=subjects.EVENTS_STREAM
        )
        for i in range(first, first + n)
    ]
    assert acks[-1].seq >= n


async def drain(tail: Tail, n: int, batch: int = 37) -> list[Entry]:
    got: list[Entry] = []
    async with asyncio.timeout(T(30)):
        while len(got) < n:
            got.extend(await tail.fetch(batch, T(2)))
            assert len(tail._buffer) + tail._asked.owed() <= Tail.CREDIT.window
    return got


async def test_a_backlog_many_windows_long_arrives_whole_and_in_order(bus: NatsBus) -> None:
    await fill(bus, N)
    tail = bus.tail("ag.evt.chat.>", 1, name="tail-test")
    try:
        got = await drain(tail, N)
        assert [int(e.data) for e in got] == list(range(N))
        assert [e.seq for e in got] == list(range(1, N + 1))
        assert got[5].subject == "ag.evt.chat.c5.message"
        assert await tail.fetch(10, 0.2) == []
        await fill(bus, 3, first=N)
        assert [e.data for e in await drain(tail, 3)] == [b"1200", b"1201", b"1202"]
    finally:
        await tail.close()


async def test_a_consumer_the_server_lost_is_recreated_after_what_was_taken(
    bus: NatsBus,
) -> None:
    await fill(bus, N)
    tail = bus.tail("ag.evt.chat.>", 1, name="tail-test")
    assert isinstance(tail, Tail)
    try:
        first = await drain(tail, 300)
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, "tail-test")  # as a restart would
        rest = await drain(tail, N - len(first))
        assert [e.seq for e in first + rest] == list(range(1, N + 1))
    finally:
        await tail.close()


async def test_a_skipped_delivery_sequence_recreates_the_consumer(bus: NatsBus) -> None:
    await fill(bus, 50)
    tail = bus.tail("ag.evt.chat.>", 1)
    assert isinstance(tail, Tail)
    try:
        got = await drain(tail, 10, batch=10)
        link = tail._link
        assert link is not None
        # a message whose delivery sequence jumps past the next one: something was lost
        d = tail._dseq + 2
        ack = f"$JS.ACK.{subjects.EVENTS_STREAM}.{tail._consumer}"
        bogus = f"{ack}.1.999.{d}.1700000000000000000.0".encode()
        tail._take(link, [wire.Msg(b"ag.evt.chat.c0.message", 1, bogus, b"", b"x")])
        assert tail._broken
        got += await drain(tail, 40)
        assert [e.seq for e in got] == list(range(1, 51))  # nothing skipped, nothing doubled
    finally:
        await tail.close()
