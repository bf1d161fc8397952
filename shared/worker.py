"""One command worker for every service that owns aggregates (chat rooms, documents).

The worker moves bytes between the bus and a service's sans-I/O domain (an ``Aggregate``):

1. fetch commands from the service's durable work-queue consumer (it heals itself after a NATS
   restart), decode them (an undecodable one is dropped: ``term``);
2. queue each on its aggregate; one task per busy aggregate drains that queue, so commands of
   one aggregate run one batch at a time, in order, and aggregates run in parallel; whatever
   queued up while a batch was being appended is the next batch (group commit);
3. ask the aggregate to ``decide`` the batch against its state, once the aggregate is free and
   loaded: events to append and each command's result. A command past its deadline gets no
   result (None) and changes nothing unless it was applied before: the gateway has answered
   ``unavailable`` already, and applying it now would make that a lie;
4. append the events as one atomic batch with the aggregate's expected last sequence, so a
   second writer or a stale state can never slip in (a ``Conflict`` reloads the state from the
   log and decides again, once; then the commands are redelivered later). A few events that
   stand alone go as a chain of appends, each expecting the one before (same guarantee, but a
   failure can leave a prefix stored: the reload finds it and answers those from the log). The
   append gives up before the earliest deadline of the commands it answers, so ``unavailable``
   stays true;
5. ``commit`` the appended events into the state, ``publish`` what the aggregate broadcasts, send
   each result to the gateway that asked, ack.
If anything fails after the append (a broadcast, a reply), the commands are not acked and come
back; the aggregate then finds them in its dedup index and answers them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from prometheus_client import Counter, Histogram

from shared import tasks
from shared.bus.port import Bus, Command, CommandQueue, Conflict, Unavailable
from shared.logs import get_logger
from shared.schemas.commands import CommandResult
from shared.schemas.wire import encode
from shared.timefmt import now_ms

__all__ = ["Aggregate", "CommandWorker", "Decision", "Pending"]

log = get_logger(__name__)

C = TypeVar("C")  # a command
S = TypeVar("S")  # an aggregate's state
K = TypeVar("K", bound=Hashable)

MIN_APPEND_S = 0.05  # the least time an append gets, however close its deadline
LOOP_BACKOFF_S = 0.5  # pause of the fetch loop after a failed round
IDLE_S = 600.0  # an aggregate unused this long is dropped from memory (reloaded on demand)
# Up to this many independent events go as a chain of single appends (one round trip each);
# more go as one atomic batch (one commit, but NATS commits few batches a second per stream).
CHAIN_MAX = 4

COMMANDS = Counter(
    "ag_commands_total", "Commands handled, by service and outcome", ["service", "outcome"]
)
APPEND_SECONDS = Histogram(
    "ag_append_seconds",
    "Time to append one aggregate's batch of events to the log",
    ["service"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


@dataclass(slots=True)
class Pending(Generic[C]):
    """A command taken from the queue, not settled yet."""

    command: Command
    cmd: C


@dataclass(slots=True)
class Decision(Generic[C]):
    """What an aggregate decided for a batch: the events to append (``(msg_id, bytes)``, in
    order, to ``subject`` with ``expect_last``), a result per command (None: no reply), and
    anything to publish again (logged before but maybe never broadcast)."""

    subject: str
    expect_last: int | None
    events: list[tuple[str, bytes]] = field(default_factory=list)
    results: list[CommandResult | None] = field(default_factory=list)
    extra: Any = None  # the aggregate's own notes for commit/publish (the event objects)
    # False: every event stands alone (one per command), so a few may be appended as a chain
    # (``Bus.append_chain``) instead of an atomic batch, which NATS commits far more slowly
    atomic: bool = True


class Aggregate(Protocol[K, S, C]):
    """A service's domain as the worker drives it. ``decide`` must not change the state (or,
    if it must, ``forget`` makes the worker reload it after a failed append)."""

    name: str
    subjects: str  # the commands it consumes (a work-queue filter) when it owns them all
    durable: str

    def partition_subjects(self, partition: int) -> str: ...  # one partition's commands
    def partition(self, key: K) -> int: ...

    def decode(self, data: bytes) -> C: ...
    def key(self, cmd: C) -> K: ...
    def deadline(self, cmd: C) -> int: ...
    def reply_to(self, cmd: C) -> str: ...
    async def load(self, key: K) -> S: ...
    def decide(self, state: S, cmds: Sequence[C], now: int) -> Decision[C]: ...
    def commit(self, state: S, decision: Decision[C], seqs: Sequence[int]) -> None: ...
    async def publish(self, state: S, decision: Decision[C]) -> None: ...


class _Slot(Generic[S, C]):
    __slots__ = ("state", "queue", "task", "touched", "lock")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # held while a batch runs, and by readers that need it
        self.state: S | None = None
        self.queue: deque[Pending[C]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.touched = time.monotonic()


class CommandWorker(Generic[K, S, C]):
    def __init__(
        self,
        bus: Bus,
        aggregate: Aggregate[K, S, C],
        *,
        batch: int = 256,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.bus = bus
        self.agg = aggregate
        self.batch = batch
        self.clock = clock  # epoch ms: deadlines and event times
        # One queue and fetch loop per owned partition (None: every command, one queue).
        self._queues: dict[int | None, CommandQueue] = {}
        self._loops: dict[int | None, asyncio.Task[None]] = {}
        self._slots: dict[K, _Slot[S, C]] = {}
        self._spawned: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Consume every command (a single worker without partition leases)."""
        self._consume(None, self.bus.commands(self.agg.subjects, self.agg.durable))

    def own(self, partition: int) -> None:
        """Consume one partition's commands (its lease was just won)."""
        durable = f"{self.agg.durable}-p{partition}"
        self._consume(partition, self.bus.commands(self.agg.partition_subjects(partition), durable))

    def _consume(self, partition: int | None, queue: CommandQueue) -> None:
        self._queues[partition] = queue
        name = f"{self.agg.name}-commands-{partition}"
        self._loops[partition] = asyncio.create_task(self._fetch_loop(queue), name=name)

    async def disown(self, partition: int, wait_s: float) -> None:
        """Stop consuming a partition, let its batches under way finish (up to ``wait_s``), and
        forget its aggregates: whoever owns it next may change them, so a later ``own`` reloads.
        Commands fetched but not run are given back: the next owner gets them at once."""
        await tasks.stop([self._loops.pop(partition, None)])
        queue = self._queues.pop(partition, None)
        if queue is not None:
            await queue.close()
        keys = [k for k in self._slots if self.agg.partition(k) == partition]
        busy = [t for k in keys if (t := self._slots[k].task) is not None]
        if busy:
            _, late = await asyncio.wait(busy, timeout=wait_s)
            for t in late:
                t.cancel()
        for k in keys:
            slot = self._slots.pop(k, None)
            if slot is not None:
                waiting = list(slot.queue)
                slot.queue.clear()
                for p in waiting:
                    await _settle(p.command.nak())

    def owned(self) -> list[int]:
        return sorted(p for p in self._queues if p is not None)

    async def stop(self) -> None:
        """No new commands first, then the batches under way."""
        await tasks.stop(list(self._loops.values()))
        self._loops.clear()
        for queue in self._queues.values():
            await queue.close()
        self._queues.clear()
        await tasks.stop(list(self._spawned))

    async def pending(self) -> int:
        return sum([await q.pending() for q in list(self._queues.values())])

    def states(self) -> dict[K, S]:
        """The aggregates in memory (for reads that a service answers from its state)."""
        return {k: s.state for k, s in self._slots.items() if s.state is not None}

    @contextlib.asynccontextmanager
    async def holding(self, key: K) -> AsyncIterator[S]:
        """The aggregate's state (loaded from the log on first use), with no batch running on
        it meanwhile: for reads of a state that ``decide`` changes before the append is done."""
        slot = self._slot(key)
        async with slot.lock:
            if slot.state is None:
                slot.state = await self.agg.load(key)
            yield slot.state

    def preload(self, states: dict[K, S]) -> None:
        """States already read from the log (a service's rebuild at start)."""
        for key, state in states.items():
            self._slot(key).state = state

    def forget(self, key: K) -> None:
        """Drop the state: the next use reloads it from the log (the log is the truth)."""
        slot = self._slots.get(key)
        if slot is not None:
            slot.state = None

    def evict(self, key: K) -> bool:
        """Drop an aggregate nothing is using (memory bounds); False if it is busy."""
        slot = self._slots.get(key)
        if slot is None:
            return True
        if slot.task is not None or slot.queue or slot.lock.locked():
            return False
        del self._slots[key]
        return True

    def tidy(self) -> None:
        """Drop aggregates nobody used for a while (a periodic call)."""
        now = time.monotonic()
        for key, slot in list(self._slots.items()):
            idle = slot.task is None and not slot.queue and not slot.lock.locked()
            if idle and now - slot.touched > IDLE_S:
                del self._slots[key]

    def _slot(self, key: K) -> _Slot[S, C]:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        slot.touched = time.monotonic()
        return slot

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        return task

    # --- the loop -------------------------------------------------------------------------
    async def _fetch_loop(self, queue: CommandQueue) -> None:
        while True:
            try:
                commands = await queue.fetch(self.batch, timeout=1.0)
            except Exception:
                log.exception("fetching commands failed; trying again")
                await asyncio.sleep(LOOP_BACKOFF_S)
                continue
            for command in commands:
                try:
                    cmd = self.agg.decode(command.data)
                except (msgspec.DecodeError, ValueError):
                    log.error("undecodable command dropped", extra={"service": self.agg.name})
                    COMMANDS.labels(self.agg.name, "undecodable").inc()
                    await _settle(command.term())
                    continue
                key = self.agg.key(cmd)
                slot = self._slot(key)
                slot.queue.append(Pending(command, cmd))
                if slot.task is None:
                    slot.task = self._spawn(self._drain(key, slot), f"{self.agg.name}-{key}")

    async def _drain(self, key: K, slot: _Slot[S, C]) -> None:
        try:
            while slot.queue:
                batch = list(slot.queue)
                slot.queue.clear()
                try:
                    async with slot.lock:
                        await self._run(key, slot, batch)
                except Exception:
                    # Not acked: redelivered, then answered from the dedup index.
                    log.exception("batch failed; will be redelivered", extra={"key": str(key)})
                    slot.state = None
                    for p in batch:
                        await _settle(p.command.nak(LOOP_BACKOFF_S))
        finally:
            slot.task = None

    async def _run(self, key: K, slot: _Slot[S, C], live: list[Pending[C]]) -> None:
        for attempt in (1, 2):
            if slot.state is None:
                slot.state = await self.agg.load(key)
            state = slot.state
            now = self.clock()  # after waiting for the aggregate and loading it
            decision = self.agg.decide(state, [p.cmd for p in live], now)
            seqs: list[int] = []
            if decision.events:
                answered = [p for p, r in zip(live, decision.results, strict=True) if r]
                deadline = min(self.agg.deadline(p.cmd) for p in answered or live)
                budget = max((deadline - self.clock()) / 1000, MIN_APPEND_S)
                started = time.perf_counter()
                try:
                    seqs = await self._append(decision, budget)
                except Conflict:
                    # Another writer, or these commands stored before a crash: the log is right.
                    COMMANDS.labels(self.agg.name, "conflict").inc(len(live))
                    slot.state = None
                    if attempt == 1:
                        continue
                    await self._retry(live)
                    return
                except Unavailable as exc:
                    log.warning("append failed", extra={"error": str(exc), "key": str(key)})
                    slot.state = None  # it may have been stored after all: reload
                    await self._retry(live)
                    return
                APPEND_SECONDS.labels(self.agg.name).observe(time.perf_counter() - started)
            self.agg.commit(state, decision, seqs)
            await self.agg.publish(state, decision)
            for p, result in zip(live, decision.results, strict=True):
                outcome = "expired" if result is None else result.error or "ok"
                COMMANDS.labels(self.agg.name, outcome).inc()
                if result is not None:
                    try:
                        await self.bus.publish(self.agg.reply_to(p.cmd), encode(result))
                    except Exception as exc:  # redelivered, then answered from the dedup index
                        log.warning("result not sent", extra={"error": repr(exc)})
                        await _settle(p.command.nak(LOOP_BACKOFF_S))
                        continue
                await _settle(p.command.ack())
            return

    async def _append(self, decision: Decision[C], budget: float) -> list[int]:
        """The events' sequences in the log, one atomic batch or a short chain."""
        events = decision.events
        if not decision.atomic and len(events) <= CHAIN_MAX:
            return await self.bus.append_chain(
                decision.subject, events, expect_last=decision.expect_last, timeout=budget
            )
        first = await self.bus.append_batch(
            decision.subject, events, expect_last=decision.expect_last, timeout=budget
        )
        return list(range(first, first + len(events)))  # a batch is stored contiguously

    async def _retry(self, live: list[Pending[C]]) -> None:
        COMMANDS.labels(self.agg.name, "retried").inc(len(live))
        for p in live:
            await _settle(p.command.nak(LOOP_BACKOFF_S))


async def _settle(step: Coroutine[Any, Any, None]) -> None:
    try:
        await step
    except Exception as exc:  # NATS away: the command comes back after its ack wait
        log.warning("could not settle a command", extra={"error": repr(exc)})
