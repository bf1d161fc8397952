"""The chat service on the in-memory bus, with faults injected: answers lost after the append,
undecodable events in a room, another writer ahead of the room."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.chat.service import ChatService
from shared import subjects
from shared.bus.memory import MemoryBus
from shared.bus.port import Unavailable
from shared.config import load_settings
from shared.eventlog import SKIPPED, decode_logged
from shared.schemas.commands import Origin, PostMessage
from shared.schemas.events import ChatMessagePosted, encode_event
from shared.schemas.wire import encode
from shared.timefmt import now_ms
from tests.bus_support import FaultyBus, Tap, lost_answer

CTX = "room"


def post(cid: str | None, content: str = "hello") -> PostMessage:
    return PostMessage(
        requestId=uuid.uuid4().hex,
        contextId=CTX,
        origin=Origin("gw", "conn", "alice", "Alice"),
        content=content,
        messageType="text",
        clientId=cid,
        deadline=now_ms() + 5000,
    )


@contextlib.asynccontextmanager
async def start(bus: MemoryBus) -> AsyncIterator[tuple[ChatService, Tap]]:
    svc = ChatService(load_settings({"AG_HEARTBEAT_S": "60"}), bus)
    tap = await Tap().watch(bus, subjects.gateway_replies("gw"), subjects.chat_live(CTX))
    await svc.start()
    try:
        yield svc, tap
    finally:
        await svc.stop()


async def stored(bus: MemoryBus) -> list[ChatMessagePosted]:
    out = []
    for e in await bus.read(subjects.chat_messages(CTX)):
        ev = decode_logged(e.data, e.seq, e.subject, "test")
        if isinstance(ev, ChatMessagePosted):
            out.append(ev)
    return out


@pytest.fixture
async def faulty() -> AsyncIterator[tuple[FaultyBus, ChatService, Tap]]:
    bus = FaultyBus(lost_answer(1))
    async with start(bus) as (svc, tap):
        yield bus, svc, tap


@pytest.mark.parametrize("client_id", [None, "m1"])
async def test_a_command_stored_but_unanswered_is_stored_once(
    faulty: tuple[FaultyBus, ChatService, Tap], client_id: str | None
) -> None:
    bus, _, tap = faulty
    await bus.submit(subjects.chat_commands(CTX), encode(post(client_id)))
    await tap.until(lambda: bool(tap.of("ag.reply")))  # redelivered, then found in the log
    assert tap.of("ag.reply")[0]["ok"]["seq"] == 1
    assert [e.seq for e in await stored(bus)] == [1]
    assert len(bus.batches) == 1  # the second try found it: nothing appended again
    await tap.until(lambda: len(tap.of("ag.live")) == 1)  # broadcast once it was confirmed


async def test_an_undecodable_event_in_a_room_is_skipped_and_the_room_goes_on() -> None:
    bus = MemoryBus()
    async with start(bus) as (_, tap):
        await bus.submit(subjects.chat_commands(CTX), encode(post("a")))
        await tap.until(lambda: len(tap.of("ag.reply")) == 1)
        before = SKIPPED.labels("chat")._value.get()
        # Garbage on the room's subject: the service's view is behind (a conflict), and the
        # reload that follows must read past it.
        bad = b'{"type":"chat.message","seq":"x"}'
        await bus.append(subjects.chat_messages(CTX), bad, msg_id="garbage")
        await bus.submit(subjects.chat_commands(CTX), encode(post("b")))
        await tap.until(lambda: len(tap.of("ag.reply")) == 2)
        assert tap.of("ag.reply")[1]["ok"]["seq"] == 2
        assert [e.seq for e in await stored(bus)] == [1, 2]
        assert SKIPPED.labels("chat")._value.get() > before


async def test_another_writer_ahead_of_the_room_makes_it_reload_and_go_on() -> None:
    bus = MemoryBus()
    async with start(bus) as (_, tap):
        await bus.submit(subjects.chat_commands(CTX), encode(post("a")))
        await tap.until(lambda: len(tap.of("ag.reply")) == 1)
        ghost = ChatMessagePosted(
            contextId=CTX,
            ts=now_ms(),
            messageId="g",
            seq=2,
            userId="ghost",
            userName="Ghost",
            content="written elsewhere",
        )
        await bus.append(subjects.chat_messages(CTX), encode_event(ghost), msg_id="ghost")
        await bus.submit(subjects.chat_commands(CTX), encode(post("b")))
        await tap.until(lambda: len(tap.of("ag.reply")) == 2)
        assert tap.of("ag.reply")[1]["ok"]["seq"] == 3
        assert [e.seq for e in await stored(bus)] == [1, 2, 3]


async def test_a_chain_broken_part_way_stores_each_message_once_and_answers_all() -> None:
    """Two messages of one batch go as a chain; the second append fails before storing. The
    first stays stored (a chain is not all-or-none): after the redelivery it is answered from
    the log and only the second is appended again."""
    bus = FaultyBus(lambda k: ("before", Unavailable("timeout")) if k == 2 else None)
    await bus.submit(subjects.chat_commands(CTX), encode(post("m1", "one")))
    await bus.submit(subjects.chat_commands(CTX), encode(post("m2", "two")))
    async with start(bus) as (_, tap):
        await tap.until(lambda: len(tap.of("ag.reply")) == 2)
        seqs = {r["clientId"]: r["ok"]["seq"] for r in tap.of("ag.reply")}
        assert seqs == {"m1": 1, "m2": 2}
        assert [(e.clientId, e.seq) for e in await stored(bus)] == [("m1", 1), ("m2", 2)]
        assert [len(b) for b in bus.batches] == [1, 1, 1]  # m1, m2 (failed), m2 again


def test_backfill_passes_hold_at_most_so_many_entries_and_a_big_room_alone() -> None:
    from services.chat.backfill import passes

    assert passes({"a": 5, "b": 4, "c": 20, "d": 1}, 10) == [{"d", "b", "a"}, {"c"}]
    assert passes({"a": 3, "b": 3, "c": 3}, 6) == [{"a", "b"}, {"c"}]
    assert passes({}, 10) == []


async def test_a_backfill_walk_keeps_a_big_rooms_dedup_to_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One room of many old messages: the walk drops dedup entries past the window as it
    goes, so it holds about its window, not every message it read."""
    from services.chat import backfill as backfill_module
    from shared.timefmt import now_ms

    bus = MemoryBus()
    old = now_ms() - 3_600_000  # an hour ago: outside the dedup window
    for i in range(1, 5001):
        ev = ChatMessagePosted(
            contextId="big", ts=old + i, messageId=f"m{i}", seq=i, userId="u",
            userName="U", content="x", clientId=f"k{i}",
        )  # fmt: skip
        await bus.append(subjects.chat_messages("big"), encode_event(ev), msg_id=f"m{i}")
    sizes: list[int] = []
    real = backfill_module.Room.apply

    def apply(room: Any, ev: ChatMessagePosted, seq: int) -> bool:
        done = real(room, ev, seq)
        sizes.append(room.dedup_size)
        return done

    monkeypatch.setattr(backfill_module.Room, "apply", apply)
    horizon = now_ms() - 240_000
    built = await backfill_module._walk(bus, {"big"}, 100, horizon)
    assert built[0].seq == 5000 and len(sizes) == 5000
    assert max(sizes) <= backfill_module.FORGET_FROM
    await bus.close()
