"""The collaboration service: one shared plain-text document per (context, session).

A document is a projection of its edit events in the log (``DocState`` over the OT core); this
module only moves bytes between NATS and those sans-I/O parts.

Edits arrive as commands on the ``AG_CMDS`` work queue (``EditCommand``, with a deadline), as chat
messages do, rather than as NATS requests:

- a command outlives a service restart shorter than its deadline: the edit is applied when the
  service is back instead of failing, and past the deadline it is dropped unapplied, so the
  gateway's ``unavailable`` is true;
- one durable consumer hands the commands out in the order they were stored, so the edits one
  connection sends reach their document in that order (a queue group promises nothing across
  instances);
- results reuse the gateway's command path (``gateway_replies``, ``CommandClient``).

The cost is one more JetStream hop per edit (memory storage, no fsync); ``ops/bench/collab.py``
measures the whole path. Reads and presence (join, leave, snapshot) are request/reply on
``RPC_COLLAB`` with a queue group: they change nothing that needs a deadline or a replay.

Edits run through the shared command worker (``shared/worker.py``) against ``CollabDocs``
(``docs.py``): each document has its own queue and runs one batch at a time (group commit: the
edits that queued up meanwhile are transformed in order and appended as one atomic batch), while
documents proceed in parallel. A join or snapshot reads a document under the same per-document
lock, so it never sees an edit applied but not yet logged. Documents are loaded lazily on first
use (from their last snapshots and the edits after them, see ``store.py``) and unloaded after a
while unused.

The background loops (commands, ticker) survive any failure of one round: they log it and go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import msgspec

from shared import subjects, tasks
from shared.bus.port import Bus, Message, Subscription, Unavailable
from shared.config import Settings
from shared.follow import LogFollower
from shared.logs import get_logger
from shared.ownership import run_partitions
from shared.partitions import collab_partition, partition_of
from shared.schemas.commands import (
    CollabClose,
    CollabJoin,
    CollabLeave,
    CollabOpen,
    CollabReply,
    CollabRequest,
    CollabSnapshotRequest,
)
from shared.schemas.frames import ParticipantData
from shared.timefmt import now_ms
from shared.worker import CommandWorker

from .docs import CollabDocs, DocKey
from .presence import PRESENCE_FILTERS, PRESENCE_SNAPSHOT, PresenceKeeper
from .state import DocState
from .store import DocStore

__all__ = ["CollabService"]

log = get_logger(__name__)

_rpc_decoder = msgspec.msgpack.Decoder(CollabRequest)
_rpc_encoder = msgspec.msgpack.Encoder()


class CollabService:
    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.store = DocStore(settings, bus)
        self.docs = CollabDocs(settings, bus, self.store)
        self.worker: CommandWorker[DocKey, DocState, Any] = CommandWorker(bus, self.docs)
        self.ownership = run_partitions(settings, bus, self.worker, "collab", self._partition_moved)
        self.presence = PresenceKeeper(bus, self.store, settings.heartbeat_s, self.owns)
        self._subs: list[Subscription] = []
        self._ticker: asyncio.Task[None] | None = None
        self._spawned: set[asyncio.Task[None]] = set()  # RPC handlers, background work
        self.follow = LogFollower(
            bus,
            PRESENCE_FILTERS,
            self.presence.follow,
            "collaboration",
            snapshot=(PRESENCE_SNAPSHOT, self.presence.pictures),
        )
        self._started = 0.0

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.follow.start(await self.presence.rebuild())
        self._started = time.monotonic()
        await self.ownership.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name="collab-ticker")
        # Answering requests last: a service that answers one is ready for everything. Every
        # worker follows every request (the next owner of a session knows who is in it); the
        # owner of the document (of the context, for sockets) alone answers and announces.
        self._subs = [
            await self.bus.subscribe(subjects.COLLAB_HEARTBEAT, self._on_heartbeat),
            await self.bus.subscribe(subjects.RPC_COLLAB, self._on_rpc),
        ]
        log.info("collaboration ready")

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await tasks.stop([self._ticker])
        await self.ownership.stop()
        await self.worker.stop()
        await tasks.stop(list(self._spawned))
        await self.follow.stop()
        await self.store.presence_log.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    # --- join / leave / snapshot / heartbeats ---------------------------------------------
    async def _on_rpc(self, msg: Message) -> None:
        # One task per request: a join that has to load its document must not hold up others.
        self._spawn(self._rpc(msg), "collab-rpc")

    async def _rpc(self, msg: Message) -> None:
        try:
            req = _rpc_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable collaboration request dropped")
            return
        if not self.owns(*_aggregate(req)):
            await self._follow(req)
            return
        try:
            reply = await self._answer(req)
        except Unavailable as exc:
            log.warning("collaboration request failed", extra={"error": str(exc)})
            reply = CollabReply(error="unavailable", message="the event log is unavailable")
        except Exception:
            log.exception("collaboration request failed")
            reply = CollabReply(error="internal", message="the document could not be read")
        if msg.reply:
            try:
                await msg.respond(_rpc_encoder.encode(reply))
            except Exception as exc:  # the gateway times out and answers `unavailable`
                log.warning("collaboration reply not sent", extra={"error": repr(exc)})

    async def _answer(self, req: CollabRequest) -> CollabReply:
        match req:
            case CollabJoin(gatewayId=gw, member=m, seq=seq):
                await self.presence.join(gw, m, time.monotonic(), seq)
                return await self._read(m.contextId, m.sessionId)
            case CollabLeave(gatewayId=gw, member=m):
                await self.presence.leave(gw, m)
                return CollabReply()
            case CollabSnapshotRequest(contextId=ctx, sessionId=session):
                return await self._read(ctx, session, participants=False)
            case CollabOpen(gatewayId=gw, conn=conn, seq=seq):
                await self.presence.connect(gw, conn, time.monotonic(), seq)
                return CollabReply()
            case CollabClose(gatewayId=gw, conn=conn):
                await self.presence.disconnect(gw, conn)
                return CollabReply()

    async def _follow(self, req: CollabRequest) -> None:
        """Someone else's request: keep presence in step, answer nothing."""
        match req:
            case CollabJoin(gatewayId=gw, member=m, seq=seq):
                await self.presence.join(gw, m, time.monotonic(), seq)
            case CollabLeave(gatewayId=gw, member=m):
                await self.presence.leave(gw, m)
            case CollabOpen(gatewayId=gw, conn=conn, seq=seq):
                await self.presence.connect(gw, conn, time.monotonic(), seq)
            case CollabClose(gatewayId=gw, conn=conn):
                await self.presence.disconnect(gw, conn)

    def owns(self, context_id: str, session_id: str | None) -> bool:
        """Whether this worker owns the document (``session_id`` None: the context's sockets,
        by the partition of the context alone)."""
        return self.ownership.owns(self._partition(context_id, session_id))

    def _partition(self, context_id: str, session_id: str | None) -> int:
        n = self.settings.partitions
        if session_id is None:
            return partition_of(n, subjects.token(context_id))
        return collab_partition(context_id, session_id, n)

    async def _partition_moved(self, partition: int, gained: bool) -> None:
        if gained:
            self._spawn(self._reconcile(partition), f"collab-reconcile-{partition}")

    async def _reconcile(self, partition: int) -> None:
        """After a takeover: announce what changed while the partition had no owner (once the
        log's presence events so far are read)."""
        await self.follow.caught_up(self.settings.lease_s)
        await self.presence.reconcile(lambda c, s: self._partition(c, s) == partition)

    async def _on_heartbeat(self, msg: Message) -> None:
        await self.presence.on_heartbeat(msg, time.monotonic())

    async def _read(self, ctx: str, session: str, participants: bool = True) -> CollabReply:
        async with self.worker.holding((ctx, session)) as state:
            content, version = state.doc.content, state.doc.version
        people = (
            [ParticipantData(**p) for p in self.presence.members(ctx, session)]
            if participants
            else []
        )
        return CollabReply(content=content, version=version, participants=people)

    # --- housekeeping ---------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)  # a periodic timer, not synchronisation
            try:
                await self._tick()
            except Exception:
                log.exception("collaboration tick failed; going on")

    async def _tick(self) -> None:
        now = time.monotonic()
        try:
            await self.presence.tick(now, now - self._started)
        finally:  # documents are tidied even when presence could not be
            horizon = now_ms() - int(self.settings.dedup_window_s * 1000) * 2
            self.worker.tidy()
            for state in self.worker.states().values():
                state.forget_before(horizon)


def _aggregate(req: CollabRequest) -> tuple[str, str | None]:
    """The document (or the context) a request is about: its owner answers it."""
    match req:
        case CollabJoin(member=m) | CollabLeave(member=m):
            return m.contextId, m.sessionId
        case CollabSnapshotRequest(contextId=ctx, sessionId=session):
            return ctx, session
        case CollabOpen(conn=conn) | CollabClose(conn=conn):
            return conn.contextId, None
    raise AssertionError(req)
