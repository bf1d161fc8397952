"""One contract, two buses: the in-memory twin must behave as NATS JetStream does.

Every test runs against ``MemoryBus`` and against ``NatsBus`` on a real ``nats-server -js``
(port 0, temp store, the project's stream configuration with a short duplicate window).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ops.natsd import start_nats
from shared import subjects
from shared.bus.memory import MemoryBus, subject_matches
from shared.bus.nats import connect, ensure_streams
from shared.bus.port import Bus, Conflict, Message, NoResponders, Unavailable
from shared.config import load_settings
from shared.partitions import partitioned_command
from tests.conftest import T

WINDOW = 1.0  # the duplicate window both buses get here (seconds)
LEASE = 1.0  # the lease time both buses get here (seconds)
PARTITIONS = 16


class Clock:
    """The memory bus's time; the NATS bus lives in real time, so ``advance`` waits there."""

    def __init__(self, real: bool) -> None:
        self.real = real
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        if self.real:
            await asyncio.sleep(seconds)  # JetStream's own clock: only real time moves it
        else:
            self.now += seconds


@pytest.fixture(params=["memory", "nats"])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Bus, Clock]]:
    if request.param == "memory":
        clock = Clock(real=False)
        mem = MemoryBus(dedup_window_s=WINDOW, ack_wait=2.0, clock=clock, lease_s=LEASE)
        yield mem, clock
        await mem.close()
        return
    server = start_nats(tmp_path / "nats", log_file=tmp_path / "nats.log")
    try:
        settings = load_settings({"AG_NATS_URL": server.url, "AG_DEDUP_WINDOW_S": str(WINDOW)})
        bus = await connect(settings, "contract")
        await ensure_streams(bus.js, 1, WINDOW, PARTITIONS, LEASE)
        yield bus, Clock(real=True)
        await bus.close()
    finally:
        server.stop()


def subject(n: int = 1) -> str:
    return f"ag.evt.chat.room{n}.message"


# --- the event log ---------------------------------------------------------------------------
async def test_appends_get_increasing_sequences_and_read_back_in_order(kit: Any) -> None:
    bus, _ = kit
    a = await bus.append(subject(1), b"a", msg_id="a")
    b = await bus.append(subject(2), b"b", msg_id="b")
    c = await bus.append(subject(1), b"c", msg_id="c")
    assert a.seq < b.seq < c.seq and not (a.duplicate or b.duplicate or c.duplicate)
    assert [e.data for e in await bus.read(subject(1))] == [b"a", b"c"]
    assert [e.data for e in await bus.read("ag.evt.chat.*.message", start=b.seq)] == [b"b", b"c"]
    assert [e.seq for e in await bus.read(subject(1), limit=1)] == [a.seq]
    assert await bus.read(subject(9)) == []
    assert await bus.log_end() == c.seq
    assert await bus.log_subjects("ag.evt.chat.*.message") == {subject(1): 2, subject(2): 1}
    assert await bus.log_subjects(subject(2)) == {subject(2): 1}
    assert await bus.log_subjects("ag.evt.collab.>") == {}


async def test_reads_page_past_a_batch_of_entries(kit: Any) -> None:
    bus, _ = kit
    for i in range(600):
        await bus.append(subject(i % 2), str(i).encode(), msg_id=f"m{i}")
    evens = await bus.read(subject(0))
    assert [int(e.data) for e in evens] == list(range(0, 600, 2))
    assert len(await bus.read(subject(0), start=evens[100].seq, limit=250)) == 200


async def test_concurrent_reads_each_get_their_own_entries(kit: Any) -> None:
    """Reads share one reply subscription on NATS: many at once must not mix their replies."""
    bus, _ = kit
    for i in range(300):
        await bus.append(subject(i % 5), f"{i % 5}:{i}".encode(), msg_id=f"c{i}")
    reads = [bus.read(subject(n % 5), limit=40 + n) for n in range(20)]
    reads += [bus.last([subject(n % 5)]) for n in range(10)]
    got = await asyncio.gather(*reads)
    for n, entries in enumerate(got[:20]):
        assert len(entries) == 40 + n
        assert {e.data.split(b":")[0] for e in entries} == {str(n % 5).encode()}
        assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    for n, found in enumerate(got[20:]):
        assert list(found) == [subject(n % 5)]
        assert int(found[subject(n % 5)].data.split(b":")[1]) >= 295


async def test_last_gives_the_newest_entry_of_each_subject(kit: Any) -> None:
    bus, _ = kit
    await bus.append(subject(1), b"1a", msg_id="1a")
    await bus.append(subject(2), b"2a", msg_id="2a")
    last1 = await bus.append(subject(1), b"1b", msg_id="1b")
    found = await bus.last([subject(1), subject(2), subject(3)])
    assert {s: e.data for s, e in found.items()} == {subject(1): b"1b", subject(2): b"2a"}
    assert found[subject(1)].seq == last1.seq


async def test_a_message_id_is_stored_once_within_the_window_and_again_after(kit: Any) -> None:
    bus, clock = kit
    first = await bus.append(subject(), b"x", msg_id="same")
    again = await bus.append(subject(), b"x", msg_id="same")
    assert again.duplicate and again.seq == first.seq
    assert len(await bus.read(subject())) == 1
    await clock.advance(WINDOW)
    deadline = time.monotonic() + T(5)
    later = await bus.append(subject(), b"x", msg_id="same")
    while later.duplicate:  # JetStream prunes its window a little after it ends: poll for it
        assert time.monotonic() < deadline, "the id is remembered past the window"
        await asyncio.sleep(0.1)  # polling the broker's clock: nothing signals the window's end
        later = await bus.append(subject(), b"x", msg_id="same")
    assert later.seq > first.seq


async def test_the_expected_last_sequence_guards_a_subject(kit: Any) -> None:
    bus, _ = kit
    first = await bus.append(subject(), b"1", msg_id="1", expect_last=0)
    await bus.append(subject(2), b"other subject", msg_id="o")  # does not move subject(1)
    second = await bus.append(subject(), b"2", msg_id="2", expect_last=first.seq)
    with pytest.raises(Conflict):
        await bus.append(subject(), b"stale", msg_id="3", expect_last=first.seq)
    with pytest.raises(Conflict):  # checked before the dedup window, as JetStream does
        await bus.append(subject(), b"1", msg_id="1", expect_last=first.seq)
    assert [e.seq for e in await bus.read(subject())] == [first.seq, second.seq]


async def test_a_batch_is_stored_whole_or_not_at_all(kit: Any) -> None:
    bus, _ = kit
    first = await bus.append_batch(subject(), [("a", b"a"), ("b", b"b"), ("c", b"c")])
    entries = await bus.read(subject())
    assert [e.data for e in entries] == [b"a", b"b", b"c"] and entries[0].seq == first
    with pytest.raises(Conflict):  # a stale expectation: nothing of it is stored
        await bus.append_batch(subject(), [("d", b"d"), ("e", b"e")], expect_last=first)
    with pytest.raises(Conflict):  # an id already stored: nothing of it either
        await bus.append_batch(subject(), [("f", b"f"), ("b", b"b")], expect_last=entries[-1].seq)
    assert len(await bus.read(subject())) == 3
    nxt = await bus.append_batch(subject(), [("g", b"g")], expect_last=entries[-1].seq)
    assert nxt == entries[-1].seq + 1


async def test_a_tail_follows_the_log_from_a_position(kit: Any) -> None:
    bus, _ = kit
    a = await bus.append(subject(1), b"a", msg_id="a")
    await bus.append("ag.evt.learning.c.x", b"l", msg_id="l")
    tail = bus.tail("ag.evt.chat.>", a.seq)
    try:
        assert [e.data for e in await tail.fetch(10, T(2))] == [b"a"]
        assert await tail.fetch(10, 0.2) == []
        await bus.append(subject(2), b"b", msg_id="b")
        got = await tail.fetch(10, T(2))
        assert [e.data for e in got] == [b"b"]
    finally:
        await tail.close()


# --- commands --------------------------------------------------------------------------------
async def test_commands_are_delivered_once_and_removed_when_acked(kit: Any) -> None:
    bus, _ = kit
    queue = bus.commands("ag.cmd.chat.>", "chat-test")
    try:
        for i in range(3):
            await bus.submit(f"ag.cmd.chat.r{i}", str(i).encode())
        got = await queue.fetch(10, T(2))
        assert sorted(c.data for c in got) == [b"0", b"1", b"2"]
        for c in got:
            await c.ack()
        assert await queue.fetch(10, 0.3) == []
    finally:
        await queue.close()


async def test_a_closed_queue_gives_its_untaken_commands_to_the_next_consumer_at_once(
    kit: Any,
) -> None:
    """A partition changing owner: what the old owner held but had not handed out reaches the
    new one now, not after the ack wait (30 s); what it handed out stays its own to settle."""
    bus, _ = kit
    old = bus.commands("ag.cmd.chat.>", "chat-test")
    new = bus.commands("ag.cmd.chat.>", "chat-test")
    try:
        for i in range(4):
            await bus.submit("ag.cmd.chat.r", str(i).encode())
        first = await old.fetch(1, T(2))
        assert [c.data for c in first] == [b"0"]
        await old.close()
        got: list[Any] = []
        deadline = time.monotonic() + T(3)
        while len(got) < 3 and time.monotonic() < deadline:
            got += await new.fetch(10, 0.2)
        assert sorted(c.data for c in got) == [b"1", b"2", b"3"]
        for c in [*first, *got]:
            await c.ack()
        assert await new.fetch(10, 0.3) == []
    finally:
        await old.close()
        await new.close()


async def test_a_chain_appends_in_order_each_expecting_the_one_before(kit: Any) -> None:
    bus, _ = kit
    first = await bus.append(subject(1), b"a", msg_id="c-a")
    other = await bus.append(subject(2), b"x", msg_id="c-x")  # another subject between: fine
    seqs = await bus.append_chain(subject(1), [("c-b", b"b"), ("c-c", b"c")], expect_last=first.seq)
    assert seqs[0] > other.seq and seqs[1] > seqs[0]
    assert [e.data for e in await bus.read(subject(1))] == [b"a", b"b", b"c"]
    assert [e.seq for e in await bus.read(subject(1))][1:] == seqs


async def test_a_chain_with_a_stale_expectation_stores_nothing(kit: Any) -> None:
    bus, _ = kit
    await bus.append(subject(1), b"a", msg_id="s-a")
    with pytest.raises(Conflict):
        await bus.append_chain(subject(1), [("s-b", b"b"), ("s-c", b"c")], expect_last=0)
    assert [e.data for e in await bus.read(subject(1))] == [b"a"]


async def test_a_chain_that_meets_a_stored_id_stops_there_with_its_prefix_stored(
    kit: Any,
) -> None:
    """Not all-or-none: what went before the failure stays, and the caller is told."""
    bus, _ = kit
    a = await bus.append(subject(1), b"a", msg_id="p-a")
    await bus.append(subject(2), b"old", msg_id="p-old")
    with pytest.raises(Conflict):
        await bus.append_chain(
            subject(1), [("p-b", b"b"), ("p-old", b"old"), ("p-c", b"c")], expect_last=a.seq
        )
    assert [e.data for e in await bus.read(subject(1))] == [b"a", b"b"]


@pytest.mark.parametrize(
    ("submitted", "filtered"),
    [
        (lambda: subjects.chat_commands("course-1"), subjects.chat_commands_partition),
        (lambda: subjects.chat_commands("Kurs 7/ä"), subjects.chat_commands_partition),
        (lambda: subjects.collab_commands("course-1", "doc-9"), subjects.collab_commands_partition),
        (lambda: subjects.collab_commands("c.1", "s 2"), subjects.collab_commands_partition),
    ],
)
async def test_a_command_lands_in_its_aggregates_partition_and_only_there(
    kit: Any, submitted: Callable[[], str], filtered: Callable[[int], str]
) -> None:
    """The stream's transform (NATS's partition hash) and ``shared/partitions.py`` agree."""
    bus, _ = kit
    subject = submitted()
    home = int(partitioned_command(subject, PARTITIONS).split(".")[3])
    other = (home + 1) % PARTITIONS
    mine = bus.commands(filtered(home), f"p{home}")
    theirs = bus.commands(filtered(other), f"p{other}")
    try:
        await bus.submit(subject, b"x")
        assert await theirs.fetch(10, 0.3) == []
        got = await mine.fetch(10, T(2))
        assert [c.data for c in got] == [b"x"]
        await got[0].ack()
    finally:
        await mine.close()
        await theirs.close()


async def test_a_lease_is_held_by_one_holder_until_released_or_lapsed(kit: Any) -> None:
    bus, clock = kit
    leases = bus.leases()
    rev = await leases.claim("chat.p.3", "w1")
    assert rev is not None
    assert await leases.claim("chat.p.3", "w2") is None
    again = await leases.claim("chat.p.3", "w1")  # a restarted w1 takes its own back
    assert again is not None and again != rev
    assert await leases.renew("chat.p.3", "w1", rev) is None  # a stale revision is refused
    rev = await leases.renew("chat.p.3", "w1", again)
    assert rev is not None
    assert await leases.holders("chat.p.") == {"chat.p.3": "w1"}
    await leases.release("chat.p.3", rev)
    assert await leases.holders("chat.p.") == {}
    assert await leases.claim("chat.p.3", "w2") is not None
    # w2 stops renewing: the lease lapses and w1 can claim it
    deadline = time.monotonic() + T(10)
    while (got := await leases.claim("chat.p.3", "w1")) is None:
        assert time.monotonic() < deadline, "the lease never lapsed"
        await clock.advance(LEASE / 4)
    assert await leases.holders("chat.p.") == {"chat.p.3": "w1"}
    assert await leases.renew("chat.p.3", "w1", got) is not None


async def test_a_nacked_command_comes_back_after_its_delay_and_a_termed_one_never(
    kit: Any,
) -> None:
    bus, clock = kit
    queue = bus.commands("ag.cmd.chat.>", "chat-test")
    try:
        await bus.submit("ag.cmd.chat.r", b"again")
        await bus.submit("ag.cmd.chat.r", b"never")
        first = {c.data: c for c in await queue.fetch(10, T(2))}
        await first[b"again"].nak(0.5)
        await first[b"never"].term()
        await clock.advance(0.6)
        back = await queue.fetch(10, T(3))
        assert [c.data for c in back] == [b"again"]
        await back[0].ack()
    finally:
        await queue.close()


async def test_an_unacked_command_is_redelivered_after_the_ack_wait(tmp_path: Path) -> None:
    """Memory only: JetStream's ack wait here is 30 s, too long to wait for in a test; the
    NATS side of this is the fault suite (a service killed before it acks)."""
    clock = Clock(real=False)
    bus = MemoryBus(ack_wait=2.0, clock=clock)
    queue = bus.commands("ag.cmd.>", "d")
    await bus.submit("ag.cmd.x", b"lost")
    assert [c.data for c in await queue.fetch(1, 0.1)] == [b"lost"]
    assert await queue.fetch(1, 0.05) == []  # in flight
    await clock.advance(2.5)
    assert [c.data for c in await queue.fetch(1, 0.1)] == [b"lost"]


async def test_only_matching_commands_reach_a_consumer(kit: Any) -> None:
    bus, _ = kit
    chat = bus.commands("ag.cmd.chat.>", "chat-test")
    collab = bus.commands("ag.cmd.collab.>", "collab-test")
    try:
        await bus.submit("ag.cmd.chat.r", b"c")
        await bus.submit("ag.cmd.collab.r.s", b"e")
        assert [c.data for c in await collab.fetch(10, T(2))] == [b"e"]
        assert [c.data for c in await chat.fetch(10, T(2))] == [b"c"]
    finally:
        await chat.close()
        await collab.close()


# --- live messages ---------------------------------------------------------------------------
async def test_subscribers_get_published_messages_in_order_with_headers(kit: Any) -> None:
    bus, _ = kit
    got: list[tuple[str, bytes, dict[str, str]]] = []
    done = asyncio.Event()

    async def on(msg: Message) -> None:
        got.append((msg.subject, msg.data, dict(msg.headers)))
        if len(got) == 50:
            done.set()

    sub = await bus.subscribe("ag.live.chat.*", on)
    await bus.flush()
    for i in range(50):
        await bus.publish(f"ag.live.chat.r{i % 3}", str(i).encode(), {"AG-Seq": str(i)})
    await bus.publish("ag.live.other.x", b"not for us")
    await asyncio.wait_for(done.wait(), T(5))
    assert [int(d) for _, d, _ in got] == list(range(50))
    assert all(h["AG-Seq"] == d.decode() for _, d, h in got)
    await sub.unsubscribe()


async def test_a_queue_group_delivers_each_message_to_one_member(kit: Any) -> None:
    bus, _ = kit
    counts = [0, 0]
    done = asyncio.Event()

    def handler(i: int) -> Callable[[Message], Any]:
        async def on(msg: Message) -> None:
            counts[i] += 1
            if sum(counts) == 20:
                done.set()

        return on

    subs = [await bus.subscribe("ag.rpc.x", handler(i), queue="q") for i in range(2)]
    await bus.flush()
    for _ in range(20):
        await bus.publish("ag.rpc.x", b"")
    await asyncio.wait_for(done.wait(), T(5))
    await bus.flush()
    assert sum(counts) == 20
    for s in subs:
        await s.unsubscribe()


async def test_a_request_is_answered_or_unavailable(kit: Any) -> None:
    bus, _ = kit

    async def echo(msg: Message) -> None:
        await msg.respond(b"re:" + msg.data)

    sub = await bus.subscribe("ag.rpc.echo", echo)
    await bus.flush()
    assert await bus.request("ag.rpc.echo", b"hi", timeout=T(2)) == b"re:hi"
    with pytest.raises(NoResponders):  # nobody serves it: no responders, at once
        started = time.monotonic()
        await bus.request("ag.rpc.nobody", b"", timeout=T(5))
    assert time.monotonic() - started < T(2)

    async def silent(msg: Message) -> None:
        return None

    mute = await bus.subscribe("ag.rpc.mute", silent)
    await bus.flush()
    with pytest.raises(Unavailable) as timed_out:
        await bus.request("ag.rpc.mute", b"", timeout=0.3)
    assert not isinstance(timed_out.value, NoResponders)
    await sub.unsubscribe()
    await mute.unsubscribe()


def test_subject_matching_follows_nats() -> None:
    assert subject_matches("a.*.c", "a.b.c") and not subject_matches("a.*.c", "a.b.d")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    assert not subject_matches("a.b", "a.b.c") and subject_matches("a.b", "a.b")
    assert subject_matches(">", "x") and not subject_matches("*", "x.y")
