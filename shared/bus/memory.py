"""The in-memory twin of the bus, for tests of the code above it (no sockets, no broker).

It keeps the contract ``NatsBus`` keeps (``tests/contract`` runs one suite against both): the
dedup window, the expected-last-sequence check (made before the dedup check, as JetStream does),
all-or-nothing batches, work-queue redelivery after a nak's delay or an unacked command's ack
wait, ordered delivery per subscription, queue groups, and "no responders" for a request nobody
serves. Time comes from ``clock`` (seconds), so a test can move it; ``flush`` returns once every
subscriber has handled what was published, which makes "wait until delivered" exact.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from shared.bus.chain import chain
from shared.bus.port import (
    Appended,
    Command,
    Conflict,
    Entry,
    Handler,
    Message,
    NoResponders,
    Unavailable,
)
from shared.partitions import partitioned_command

__all__ = ["MemoryBus", "subject_matches"]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, tok in enumerate(want):
        if tok == ">":
            return len(got) > i
        if i >= len(got) or (tok != "*" and tok != got[i]):
            return False
    return len(want) == len(got)


@dataclass(slots=True)
class _Live:
    subject: str
    data: bytes
    headers: Mapping[str, str]
    reply: str | None
    bus: MemoryBus

    async def respond(self, data: bytes) -> None:
        if self.reply is not None:
            await self.bus.publish(self.reply, data)


class _Sub:
    def __init__(self, bus: MemoryBus, subject: str, handler: Handler, queue: str | None) -> None:
        self.bus = bus
        self.subject = subject
        self.handler = handler
        self.queue = queue
        self.inbox: asyncio.Queue[_Live] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name=f"memory-sub-{subject}")

    async def _run(self) -> None:
        while True:
            msg = await self.inbox.get()
            try:
                await self.handler(msg)
            except Exception:  # as nats-py does: a failing handler does not end the subscription
                pass
            finally:
                self.inbox.task_done()

    async def unsubscribe(self) -> None:
        if self in self.bus._subs:
            self.bus._subs.remove(self)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@dataclass(slots=True)
class _Queued:
    """A command in the work queue: when it may be delivered (again), until when it is out."""

    id: int
    subject: str
    data: bytes
    available_at: float = 0.0
    out_until: float | None = None  # in flight until (ack wait); None: not delivered now
    deliveries: int = 0


@dataclass(slots=True)
class _Delivered:
    queue: _CommandQueue
    item: _Queued
    settled: bool = False

    @property
    def data(self) -> bytes:
        return self.item.data

    def _settle(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        return True

    async def ack(self) -> None:
        if self._settle():
            self.queue.bus._remove(self.item)

    async def term(self) -> None:
        if self._settle():
            self.queue.bus._remove(self.item)

    async def nak(self, delay: float = 0.0) -> None:
        if self._settle():
            self.item.out_until = None
            self.item.available_at = self.queue.bus.clock() + delay
            self.queue.bus._changed()


class _CommandQueue:
    def __init__(self, bus: MemoryBus, subjects: str, ack_wait: float) -> None:
        self.bus = bus
        self.subjects = subjects
        self.ack_wait = ack_wait

    def _ready(self, now: float) -> list[_Queued]:
        out = []
        for item in self.bus._work:
            if not subject_matches(self.subjects, item.subject):
                continue
            if item.out_until is not None and item.out_until <= now:
                item.out_until = None  # never acked in time: redeliver
            if item.out_until is None and item.available_at <= now:
                out.append(item)
        return out

    async def fetch(self, batch: int, timeout: float) -> list[Command]:
        deadline = time.monotonic() + timeout
        while True:
            now = self.bus.clock()
            ready = self._ready(now)[:batch]
            if ready:
                for item in ready:
                    item.out_until = now + self.ack_wait
                    item.deliveries += 1
                return [_Delivered(self, item) for item in ready]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            # Wake on a new command, or when a delayed one falls due (on the bus's clock).
            due = [i.available_at for i in self.bus._work if i.available_at > now]
            due += [i.out_until for i in self.bus._work if i.out_until is not None]
            wait = min([left, *(max(d - now, 0.001) for d in due)])
            await self.bus._wait_changed(wait)

    async def pending(self) -> int:
        return len(self._ready(self.bus.clock()))

    async def close(self) -> None:
        return None


class _Tail:
    def __init__(self, bus: MemoryBus, subjects: str, start: int) -> None:
        self.bus = bus
        self.subjects = subjects
        self.next = max(start, 1)

    async def fetch(self, batch: int, timeout: float) -> list[Entry]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.bus._read(self.subjects, self.next, batch)
            if got:
                self.next = got[-1].seq + 1
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            await self.bus._wait_changed(left)

    async def pending(self) -> int:
        return len(self.bus._read(self.subjects, self.next, 10**12))

    async def close(self) -> None:
        return None


class _Leases:
    """The lease bucket: key -> (holder, revision, lapses at), on the bus's clock."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus
        self.held: dict[str, tuple[str, int, float]] = {}
        self.revisions = itertools.count(1)

    def _live(self, key: str) -> tuple[str, int, float] | None:
        got = self.held.get(key)
        if got is not None and got[2] <= self.bus.clock():
            del self.held[key]
            return None
        return got

    def _put(self, key: str, holder: str) -> int:
        rev = next(self.revisions)
        self.held[key] = (holder, rev, self.bus.clock() + self.bus.lease_s)
        return rev

    async def claim(self, key: str, holder: str) -> int | None:
        got = self._live(key)
        if got is not None and got[0] != holder:
            return None
        return self._put(key, holder)

    async def renew(self, key: str, holder: str, revision: int) -> int | None:
        got = self._live(key)
        if got is None or got[1] != revision:
            return None
        return self._put(key, holder)

    async def release(self, key: str, revision: int) -> None:
        got = self._live(key)
        if got is not None and got[1] == revision:
            del self.held[key]

    async def holders(self, prefix: str) -> dict[str, str]:
        return {k: v[0] for k in list(self.held) if k.startswith(prefix) and (v := self._live(k))}


@dataclass
class MemoryBus:
    dedup_window_s: float = 120.0
    ack_wait: float = 30.0
    max_payload: int = 1 << 20
    clock: Callable[[], float] = time.monotonic
    partitions: int = 16  # the command streams' transform (``shared/partitions.py``)
    lease_s: float = 3.0
    _log: list[Entry] = field(default_factory=list)
    _snapshots: dict[str, bytes] = field(default_factory=dict)
    _last: dict[str, int] = field(default_factory=dict)  # subject -> last sequence
    _ids: dict[str, tuple[int, float]] = field(default_factory=dict)  # msg id -> (seq, when)
    _work: list[_Queued] = field(default_factory=list)
    _work_ids: itertools.count[int] = field(default_factory=itertools.count)
    _subs: list[_Sub] = field(default_factory=list)
    _inboxes: itertools.count[int] = field(default_factory=itertools.count)
    _queue_turn: itertools.count[int] = field(default_factory=itertools.count)
    _change: asyncio.Event | None = None
    _published: int = 0
    _reconnect: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _leases: _Leases | None = None

    @property
    def connected(self) -> bool:
        return True

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._reconnect.append(callback)

    async def reconnected(self) -> None:
        """Test hook: behave as after a lost and restored connection."""
        for cb in self._reconnect:
            await cb()

    # --- the event log ----------------------------------------------------------------------
    def _check(self, subject: str, data: bytes, expect_last: int | None) -> None:
        if len(data) > self.max_payload:
            raise Unavailable("message too large")
        if expect_last is not None and self._last.get(subject, 0) != expect_last:
            raise Conflict(f"wrong last sequence: {self._last.get(subject, 0)}")

    def _seen(self, msg_id: str) -> int | None:
        hit = self._ids.get(msg_id)
        if hit is None or self.clock() - hit[1] >= self.dedup_window_s:
            return None
        return hit[0]

    def _store(self, subject: str, data: bytes, msg_id: str) -> int:
        seq = len(self._log) + 1
        self._log.append(Entry(seq, subject, data))
        self._last[subject] = seq
        self._ids[msg_id] = (seq, self.clock())
        self._changed()
        return seq

    async def append(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> Appended:
        self._check(subject, data, expect_last)
        seen = self._seen(msg_id)
        if seen is not None:
            return Appended(seen, duplicate=True)
        return Appended(self._store(subject, data, msg_id))

    async def append_batch(
        self,
        subject: str,
        items: Sequence[tuple[str, bytes]],
        *,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> int:
        if not items:
            raise ValueError("empty batch")
        self._check(subject, items[0][1], expect_last)
        ids = [mid for mid, _ in items]
        if len(set(ids)) != len(ids) or any(self._seen(mid) is not None for mid in ids):
            raise Conflict("a message id in the batch is already stored")
        return [self._store(subject, data, mid) for mid, data in items][0]

    async def append_chain(
        self,
        subject: str,
        items: Sequence[tuple[str, bytes]],
        *,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> list[int]:
        return await chain(self, subject, items, expect_last, timeout)

    def _read(self, subject: str, start: int, limit: int) -> list[Entry]:
        out = []
        for entry in self._log[max(start, 1) - 1 :]:
            if subject_matches(subject, entry.subject):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    async def read(
        self, subject: str, start: int = 1, limit: int = 1_000_000, *, timeout: float = 5.0
    ) -> list[Entry]:
        return self._read(subject, start, limit)

    async def last(self, subjects: Sequence[str], *, timeout: float = 5.0) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for entry in self._log:
            for wanted in subjects:
                if subject_matches(wanted, entry.subject):
                    found[entry.subject] = entry
        return found

    async def log_end(self) -> int:
        return len(self._log)

    async def log_subjects(self, pattern: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry in self._log:
            if subject_matches(pattern, entry.subject):
                found[entry.subject] = found.get(entry.subject, 0) + 1
        return found

    async def snapshot(self, key: str) -> bytes | None:
        return self._snapshots.get(key)

    async def save_snapshot(self, key: str, data: bytes) -> None:
        if len(data) > self.max_payload:
            raise Unavailable(f"snapshot of {len(data)} bytes is over the payload limit")
        self._snapshots[key] = data

    def tail(self, subjects: str, start: int, name: str | None = None) -> _Tail:
        return _Tail(self, subjects, start)

    # --- commands ---------------------------------------------------------------------------
    async def submit(self, subject: str, data: bytes, *, timeout: float = 5.0) -> None:
        if len(data) > self.max_payload:
            raise Unavailable("command too large")
        subject = partitioned_command(subject, self.partitions)
        self._work.append(_Queued(next(self._work_ids), subject, data))
        self._changed()

    def commands(self, subjects: str, durable: str) -> _CommandQueue:
        return _CommandQueue(self, subjects, self.ack_wait)

    # --- leases -----------------------------------------------------------------------------
    def leases(self) -> _Leases:
        if self._leases is None:
            self._leases = _Leases(self)
        return self._leases

    def _remove(self, item: _Queued) -> None:
        if item in self._work:
            self._work.remove(item)
        self._changed()

    # --- live messages ----------------------------------------------------------------------
    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        self._deliver(subject, data, headers or {}, None)

    def _deliver(
        self, subject: str, data: bytes, headers: Mapping[str, str], reply: str | None
    ) -> int:
        groups: dict[str, list[_Sub]] = {}
        targets: list[_Sub] = []
        for sub in self._subs:
            if subject_matches(sub.subject, subject):
                if sub.queue is None:
                    targets.append(sub)
                else:
                    groups.setdefault(sub.queue, []).append(sub)
        for members in groups.values():
            targets.append(members[next(self._queue_turn) % len(members)])
        for sub in targets:
            sub.inbox.put_nowait(_Live(subject, data, dict(headers), reply, self))
        self._published += len(targets)
        self._changed()
        return len(targets)

    async def subscribe(self, subject: str, handler: Handler, *, queue: str | None = None) -> _Sub:
        sub = _Sub(self, subject, handler, queue)
        self._subs.append(sub)
        return sub

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        inbox = f"_INBOX.{next(self._inboxes)}"
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_reply(msg: Message) -> None:
            if not answer.done():
                answer.set_result(msg.data)

        sub = await self.subscribe(inbox, on_reply)
        try:
            if self._deliver(subject, data, {}, inbox) == 0:
                raise NoResponders(f"no responders on {subject}")
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            raise Unavailable(f"no answer on {subject} in {timeout}s") from None
        finally:
            await sub.unsubscribe()

    async def flush(self) -> None:
        """Return once every subscriber has handled everything published so far (and what
        their handlers published in turn)."""
        while True:
            before = self._published
            await asyncio.gather(*(s.inbox.join() for s in list(self._subs)))
            if self._published == before:
                return

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.unsubscribe()

    # --- waiting for changes ----------------------------------------------------------------
    async def changed(self, timeout: float) -> None:
        """Test hook: return at the next change (an append, a command, a publish, a settle),
        or after ``timeout`` seconds."""
        await self._wait_changed(timeout)

    def _changed(self) -> None:
        if self._change is not None:
            self._change.set()
            self._change = None

    async def _wait_changed(self, timeout: float) -> None:
        if self._change is None:
            self._change = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._change.wait()
        except TimeoutError:
            pass
