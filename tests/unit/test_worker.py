"""The command worker with a toy aggregate (counters) on the in-memory bus: order, batching,
conflicts, lost answers, undecodable commands, and a loop that survives a failed round."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.bus.memory import MemoryBus
from shared.schemas.commands import CommandResult
from shared.timefmt import now_ms
from shared.worker import CommandWorker, Decision
from tests.bus_support import FaultyBus, Tap, lost_answer


@dataclass
class Counter:
    key: str
    value: int = 0
    last: int = 0  # sequence of the counter's last event in the log
    seen: set[str] = field(default_factory=set)


class Counters:
    """Commands ``{"key", "id", "add", "deadline"}`` add to a counter; the events are the new
    values. Records every batch it decided, and how often it loaded."""

    name = "toy"
    subjects = "ag.cmd.toy.>"
    durable = "toy"

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus
        self.batches: list[list[str]] = []
        self.loads = 0

    def decode(self, data: bytes) -> dict[str, Any]:
        cmd = json.loads(data)
        if not isinstance(cmd, dict):
            raise ValueError("not a command")
        return cmd

    def key(self, cmd: dict[str, Any]) -> str:
        return str(cmd["key"])

    def deadline(self, cmd: dict[str, Any]) -> int:
        return int(cmd.get("deadline", now_ms() + 5000))

    def reply_to(self, cmd: dict[str, Any]) -> str:
        return "ag.reply.toy"

    def partition_subjects(self, partition: int) -> str:
        return f"ag.cmd.toy.{partition}.*"

    def partition(self, key: str) -> int:
        return 0

    async def load(self, key: str) -> Counter:
        self.loads += 1
        counter = Counter(key)
        for entry in await self.bus.read(f"ag.evt.toy.{key}"):
            body = json.loads(entry.data)
            counter.value, counter.last = body["value"], entry.seq
            counter.seen.add(body["id"])
        return counter

    def decide(self, c: Counter, cmds: Sequence[dict[str, Any]], now: int) -> Decision[Any]:
        self.batches.append([cmd["id"] for cmd in cmds])
        d = Decision[Any](f"ag.evt.toy.{c.key}", c.last, extra=[])
        value = c.value
        for cmd in cmds:
            if cmd["id"] in c.seen:
                d.results.append(CommandResult(cmd["id"], "conn", ok={"dup": True}))
                continue
            value += cmd["add"]
            d.events.append((cmd["id"], json.dumps({"id": cmd["id"], "value": value}).encode()))
            d.extra.append((cmd["id"], value))
            d.results.append(CommandResult(cmd["id"], "conn", ok={"value": value}))
        return d

    def commit(self, c: Counter, d: Decision[Any], seqs: Sequence[int]) -> None:
        for (cid, value), seq in zip(d.extra, seqs, strict=True):
            c.value, c.last = value, seq
            c.seen.add(cid)

    async def publish(self, c: Counter, d: Decision[Any]) -> None:
        return None


@contextlib.asynccontextmanager
async def run(
    bus: MemoryBus,
) -> AsyncIterator[tuple[CommandWorker[str, Counter, Any], Counters, Tap]]:
    agg = Counters(bus)
    worker = CommandWorker(bus, agg)
    tap = await Tap().watch(bus, "ag.reply.toy")
    worker.start()
    try:
        yield worker, agg, tap
    finally:
        await worker.stop()


def send(bus: MemoryBus, key: str, cid: str, add: int = 1, **kw: Any) -> Any:
    return bus.submit(
        f"ag.cmd.toy.{key}", json.dumps({"key": key, "id": cid, "add": add, **kw}).encode()
    )


@pytest.fixture
async def kit() -> AsyncIterator[tuple[MemoryBus, CommandWorker[str, Counter, Any], Counters, Tap]]:
    bus = MemoryBus()
    async with run(bus) as (worker, agg, tap):
        yield bus, worker, agg, tap


async def test_commands_of_one_aggregate_apply_in_order_and_queue_into_the_next_batch(
    kit: Any,
) -> None:
    bus, worker, agg, tap = kit
    async with worker.holding("a"):  # a batch is running: what arrives now queues up
        for i in range(5):
            await send(bus, "a", f"a{i}")
        await tap.until(lambda: all(w.deliveries for w in bus._work) and len(bus._work) == 5)
    await tap.until(lambda: len(tap.of("ag.reply")) == 5)
    assert [r["ok"]["value"] for r in tap.of("ag.reply")] == [1, 2, 3, 4, 5]
    assert agg.batches == [["a0", "a1", "a2", "a3", "a4"]]  # one batch, one append
    assert len(await bus.read("ag.evt.toy.a")) == 5


async def test_aggregates_do_not_wait_for_each_other(kit: Any) -> None:
    bus, worker, _, tap = kit
    async with worker.holding("slow"):
        await send(bus, "slow", "s1")
        await send(bus, "fast", "f1")
        await tap.until(lambda: len(tap.of("ag.reply")) == 1)
        assert tap.of("ag.reply")[0]["requestId"] == "f1"
    await tap.until(lambda: len(tap.of("ag.reply")) == 2)


async def test_an_undecodable_command_is_dropped_and_the_rest_go_on(kit: Any) -> None:
    bus, _, _, tap = kit
    await bus.submit("ag.cmd.toy.a", b"[1, 2]")
    await send(bus, "a", "ok")
    await tap.until(lambda: len(tap.of("ag.reply")) == 1 and not bus._work)


async def test_a_conflict_reloads_the_state_and_decides_again(kit: Any) -> None:
    bus, _, agg, tap = kit
    await send(bus, "a", "a1")
    await tap.until(lambda: len(tap.of("ag.reply")) == 1)
    other = json.dumps({"id": "x", "value": 100}).encode()
    await bus.append("ag.evt.toy.a", other, msg_id="x")  # another writer got there first
    await send(bus, "a", "a2")
    await tap.until(lambda: len(tap.of("ag.reply")) == 2)
    assert tap.of("ag.reply")[1]["ok"]["value"] == 101 and agg.loads == 2


async def test_an_answer_lost_after_the_append_is_found_in_the_log_on_redelivery() -> None:
    bus = FaultyBus(lost_answer(1))
    async with run(bus) as (_, agg, tap):
        await send(bus, "a", "a1")
        await tap.until(lambda: len(tap.of("ag.reply")) == 1)
        assert tap.of("ag.reply")[0]["ok"] == {"dup": True}  # stored once, answered anyway
        assert len(await bus.read("ag.evt.toy.a")) == 1 and agg.loads == 2


async def test_a_command_past_its_deadline_gives_the_append_no_time_it_does_not_have() -> None:
    timeouts: list[float] = []

    class Spy(MemoryBus):
        async def append_batch(self, *a: Any, **kw: Any) -> int:
            timeouts.append(kw["timeout"])
            return await super().append_batch(*a, **kw)

    bus = Spy()
    async with run(bus) as (_, _, tap):
        await send(bus, "a", "a1", deadline=now_ms() + 1500)
        await tap.until(lambda: len(tap.of("ag.reply")) == 1)
    assert len(timeouts) == 1 and 1.0 < timeouts[0] <= 1.5


async def test_the_fetch_loop_survives_a_failed_round(
    kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus, worker, _, tap = kit
    calls = 0
    made = bus.commands

    def commands(subjects: str, durable: str) -> Any:
        queue = made(subjects, durable)
        real = queue.fetch

        async def flaky(batch: int, timeout: float) -> list[Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("NATS away")
            return await real(batch, timeout)

        queue.fetch = flaky  # type: ignore[method-assign]
        return queue

    monkeypatch.setattr("shared.worker.LOOP_BACKOFF_S", 0.01)
    monkeypatch.setattr(bus, "commands", commands)
    await worker.stop()
    worker.start()
    await send(bus, "a", "a1")
    await tap.until(lambda: len(tap.of("ag.reply")) == 1)
    assert calls >= 2


async def test_holding_an_aggregate_keeps_batches_off_it(kit: Any) -> None:
    bus, worker, _, tap = kit
    async with worker.holding("a") as counter:
        await send(bus, "a", "a1")
        await tap.until(lambda: bool(bus._work) and bus._work[0].deliveries > 0)
        assert counter.value == 0 and tap.of("ag.reply") == []
    await tap.until(lambda: len(tap.of("ag.reply")) == 1)
