"""What the services and the gateway need from the broker, as one small typed interface.

Two implementations keep the same contract (``tests/contract``): ``NatsBus`` over NATS JetStream,
the real one, and ``MemoryBus``, an in-memory twin for fast tests of the code above it. Nothing
outside ``shared/bus/nats.py`` imports ``nats``.

The parts:

- **the event log** (a JetStream stream kept forever): ``append`` one event or ``append_batch``
  several atomically, each with a message id (stored once within the dedup window) and optionally
  the subject's expected last sequence (optimistic concurrency, ``Conflict``); ``read`` a subject
  from a sequence on, ``last`` entries of subjects, ``tail`` the whole log from a position;
- **commands** (a work-queue stream): ``submit`` one durably, ``commands`` to consume them with
  explicit ack / nak-with-delay / term and redelivery of what was not acked;
- **leases** (a JetStream KV bucket with a TTL): exclusive, expiring claims on keys, renewed with
  a revision check: how workers own partitions (``shared/ownership.py``);
- **live messages** (core pub/sub, not stored): ``publish``, ``subscribe`` (optionally in a
  queue group), ``request`` / ``Message.respond``.

Errors: ``Conflict`` (the expected last sequence did not hold, or a batch held an id already
stored: nothing was appended), ``Unavailable`` (the broker did not answer in time, or nobody
serves a request subject).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Appended",
    "Bus",
    "BusError",
    "Command",
    "CommandQueue",
    "Conflict",
    "Entry",
    "Handler",
    "Leases",
    "LogTail",
    "Message",
    "NoResponders",
    "Subscription",
    "Unavailable",
]


class BusError(Exception):
    """Root of the bus's errors."""


class Conflict(BusError):
    """Nothing was appended: the subject's last sequence was not the expected one, or (a batch)
    a message id in it was already stored."""


class Unavailable(BusError):
    """The broker did not answer in time, is not connected, or nobody serves the subject."""


class NoResponders(Unavailable):
    """A request found nobody serving its subject (answered at once, not a timeout)."""


@dataclass(slots=True)  # not frozen: one is built per entry read, and frozen costs 4x
class Entry:
    """One stored event: its sequence in the log, its subject and its bytes (read-only)."""

    seq: int
    subject: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an append landed; ``duplicate``: its message id was already stored there."""

    seq: int
    duplicate: bool = False


class Message(Protocol):
    """A live message or a request, as a subscriber gets it."""

    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def reply(self) -> str | None: ...
    async def respond(self, data: bytes) -> None: ...


Handler = Callable[[Message], Awaitable[None]]


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class Command(Protocol):
    """One command taken from the work queue; settled exactly once (or redelivered)."""

    @property
    def data(self) -> bytes: ...
    async def ack(self) -> None: ...
    async def nak(self, delay: float = 0.0) -> None: ...
    async def term(self) -> None: ...


class CommandQueue(Protocol):
    """A durable consumer of commands. It heals itself: if the broker lost it (a restart of an
    in-memory stream), the next fetch creates it again."""

    async def fetch(self, batch: int, timeout: float) -> list[Command]: ...
    async def pending(self) -> int: ...
    async def close(self) -> None: ...


class LogTail(Protocol):
    """The log read in order from a position, with no acknowledgements: the reader keeps its
    own position (a projection's checkpoint). Re-opens itself after a broker restart."""

    async def fetch(self, batch: int, timeout: float) -> list[Entry]: ...
    async def pending(self) -> int: ...
    async def close(self) -> None: ...


class Leases(Protocol):
    """Exclusive claims that lapse unless renewed (``AG_LEASE_S``). A holder is a worker id."""

    async def claim(self, key: str, holder: str) -> int | None:
        """The lease's revision if ``key`` was free or is already ``holder``'s (a restarted
        worker with the same id), else None."""
        ...

    async def renew(self, key: str, holder: str, revision: int) -> int | None:
        """The new revision; None if the lease lapsed or someone else holds it now."""
        ...

    async def release(self, key: str, revision: int) -> None:
        """Give the lease up (only if it is still at ``revision``)."""
        ...

    async def holders(self, prefix: str) -> dict[str, str]:
        """Every live lease under ``prefix``: key -> holder."""
        ...


class Bus(Protocol):
    @property
    def connected(self) -> bool: ...
    @property
    def max_payload(self) -> int: ...

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` whenever the connection comes back after a loss."""
        ...

    # --- the event log ----------------------------------------------------------------------
    async def append(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> Appended: ...

    async def append_batch(
        self,
        subject: str,
        items: Sequence[tuple[str, bytes]],
        *,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> int:
        """Append ``(msg_id, data)`` items to one subject, all or none, in order; the expected
        last sequence applies to the first. Returns the sequence of the first."""
        ...

    async def append_chain(
        self,
        subject: str,
        items: Sequence[tuple[str, bytes]],
        *,
        expect_last: int | None = None,
        timeout: float = 5.0,
    ) -> list[int]:
        """Append ``(msg_id, data)`` items to one subject one after another, each expecting the
        one before it as the subject's last: in order and with no other writer in between, but
        not all-or-none (a failure part-way leaves a prefix stored; ``Conflict`` or
        ``Unavailable`` says it failed). For events that stand alone; NATS's atomic batches
        are staged and committed under the stream's lock, a few hundred a second per stream,
        while single appends go at the stream's full rate. Returns each one's sequence."""
        ...

    async def read(
        self, subject: str, start: int = 1, limit: int = 1_000_000, *, timeout: float = 5.0
    ) -> list[Entry]:
        """Up to ``limit`` entries on ``subject`` (wildcards allowed) from sequence ``start``."""
        ...

    async def last(self, subjects: Sequence[str], *, timeout: float = 5.0) -> dict[str, Entry]:
        """The last entry of each subject that has one."""
        ...

    async def log_end(self) -> int:
        """The sequence of the last entry in the log (0 when empty)."""
        ...

    async def log_subjects(self, pattern: str) -> dict[str, int]:
        """The log's subjects that match ``pattern`` (wildcards allowed), each with how many
        entries it holds: which rooms or documents the log has, without reading them."""
        ...

    async def snapshot(self, key: str) -> bytes | None:
        """The last snapshot saved under ``key`` (a projection's cache of the log), or None."""
        ...

    async def save_snapshot(self, key: str, data: bytes) -> None:
        """Keep ``data`` as ``key``'s snapshot (the previous one is replaced)."""
        ...

    def tail(self, subjects: str, start: int, name: str | None = None) -> LogTail:
        """Every entry on ``subjects`` from sequence ``start`` on, as it is appended. ``name``
        labels it for operators; a tail of that name left by an earlier process is replaced."""
        ...

    # --- commands ---------------------------------------------------------------------------
    async def submit(self, subject: str, data: bytes, *, timeout: float = 5.0) -> None:
        """Store a command durably in the work queue (``Unavailable`` if it was not)."""
        ...

    def commands(self, subjects: str, durable: str) -> CommandQueue: ...

    # --- leases ----------------------------------------------------------------------------
    def leases(self) -> Leases: ...

    # --- live messages ----------------------------------------------------------------------
    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None: ...

    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str | None = None
    ) -> Subscription: ...

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes: ...

    async def flush(self) -> None:
        """Wait until what was published has reached the broker."""
        ...

    async def close(self) -> None: ...
