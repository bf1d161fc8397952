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
- results reuse the gateway's command path (``gateway_replies``, ``Hub.expect``).

The cost is one more JetStream hop per edit (memory storage, no fsync); ``ops/bench/collab.py``
measures the whole path. Reads and presence (join, leave, snapshot) are request/reply on
``RPC_COLLAB`` with a queue group: they change nothing that needs a deadline or a replay.

Each document has its own queue and at most one worker, and everything touching a document (an
edit, a join reading it, a load) holds its lock, so a document is edited strictly one command at
a time while documents proceed in parallel. Documents are loaded lazily on first use (from their
last snapshots and the edits after them, see ``store.py``) and unloaded after ``IDLE_S`` unused.

The deadline is checked once the lock is held and the document loaded, and what is left of it
bounds the append, so an edit is not applied after the gateway answered ``unavailable`` (up to
``MIN_APPEND_S``, which the gateway's own grace covers). An edit is logged before it is
broadcast; when a command turns out to be already logged (a redelivery after a crash between the
two, a re-sent id, even an expired command), its parts are broadcast again unless this process
broadcast them itself (see ``DocState.unsent``), so no editor stays a version short.

The background loops (commands, ticker) survive any failure of one round: they log it and go on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Literal

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError
from prometheus_client import Counter, Histogram

from shared import subjects
from shared.config import Settings
from shared.logs import get_logger
from shared.natsio import BatchRefused, DurablePull
from shared.schemas.commands import (
    CollabClose,
    CollabJoin,
    CollabLeave,
    CollabOpen,
    CollabReply,
    CollabRequest,
    CollabSnapshotRequest,
    CommandResult,
    EditCommand,
)
from shared.schemas.events import EditApplied
from shared.schemas.wire import encode, encode_frame
from shared.timefmt import ms_to_ts, now_ms

from .ot_errors import OTError
from .presence import PresenceKeeper
from .state import DocState, Outcome, edit_frame_data, refusal
from .store import Conflict, DocStore

__all__ = ["CollabService"]

log = get_logger(__name__)

DURABLE = "collab"
IDLE_S = 600.0  # an unused document is dropped from memory after this (reloaded on demand)
MIN_APPEND_S = 0.1  # the least time an append gets, however close its command's deadline
LOOP_BACKOFF_S = 0.5  # pause of a background loop after a failed round
EDITS = Counter("ag_collab_edits_total", "Edit commands handled, by outcome", ["outcome"])
EDIT_SECONDS = Histogram(
    "ag_collab_edit_seconds",
    "Time to transform, log and broadcast one edit (lock held)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
_edit_decoder = msgspec.json.Decoder(EditCommand)
_rpc_decoder = msgspec.msgpack.Decoder(CollabRequest)
_rpc_encoder = msgspec.msgpack.Encoder()
_Key = tuple[str, str]
_Verdict = CommandResult | Literal["retry", "expired"]


class _Slot:
    """One document's place in memory: its state (None until loaded), lock and command queue."""

    __slots__ = ("lock", "state", "queue", "worker", "touched")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.state: DocState | None = None
        self.queue: deque[tuple[Msg, EditCommand]] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.touched = time.monotonic()


class CollabService:
    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings = settings
        self.nc = nc
        self.js = nc.jetstream()
        self.store = DocStore(settings, nc)
        self.presence = PresenceKeeper(nc, self.store, settings.heartbeat_s)
        self._slots: dict[_Key, _Slot] = {}
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[None]] = set()  # document workers and RPC handlers
        self._started = 0.0

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.presence.rebuild()
        self._started = time.monotonic()
        self._psub = DurablePull.commands(
            self.js, self.settings, subjects.COLLAB_COMMANDS_ALL, DURABLE
        )
        await self._psub.open()
        self._tasks = [
            asyncio.create_task(self._command_loop(), name="collab-commands"),
            asyncio.create_task(self._ticker(), name="collab-ticker"),
        ]
        # Answering requests last: a service that answers one is ready for everything.
        self._subs = [
            await self.nc.subscribe(subjects.COLLAB_HEARTBEAT, cb=self._on_heartbeat),
            await self.nc.subscribe(subjects.RPC_COLLAB, "collab", cb=self._on_rpc),
        ]
        log.info("collaboration ready")

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        for task in self._tasks:  # no new commands first, then the work under way
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # An expired pull request may still answer into its inbox; with nobody left to read it,
        # the connection's drain would wait for it until its timeout.
        await self._psub.close()
        for task in list(self._spawned):
            task.cancel()
        await asyncio.gather(*self._spawned, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        return task

    def _slot(self, key: _Key) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        slot.touched = time.monotonic()
        return slot

    async def _state(self, key: _Key, slot: _Slot) -> DocState:
        """The document, loaded from the log on first use; the caller holds ``slot.lock``."""
        if slot.state is None:
            slot.state = await self.store.load(*key)
        return slot.state

    # --- edits ----------------------------------------------------------------------------
    async def _command_loop(self) -> None:
        while True:
            try:
                msgs = await self._psub.fetch(256, timeout=1.0)  # heals a lost consumer itself
            except Exception:
                log.exception("fetching commands failed; trying again")
                await asyncio.sleep(LOOP_BACKOFF_S)
                continue
            for msg in msgs:
                try:
                    await self._dispatch(msg)
                except Exception:  # not acked: redelivered after ack_wait
                    log.exception("command not dispatched")

    async def _dispatch(self, msg: Msg) -> None:
        try:
            cmd = _edit_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable command dropped")
            await msg.term()
            return
        key = (cmd.contextId, cmd.sessionId)
        slot = self._slot(key)
        slot.queue.append((msg, cmd))
        if slot.worker is None:
            slot.worker = self._spawn(self._work(key, slot), f"collab-doc-{key}")

    async def _work(self, key: _Key, slot: _Slot) -> None:
        try:
            while slot.queue:
                msg, cmd = slot.queue.popleft()
                try:
                    await self._run(key, slot, msg, cmd)
                except Exception:
                    # e.g. the reply could not be published: the redelivery is answered from the
                    # dedup index. The document's other commands go on.
                    log.exception(
                        "command failed; will be redelivered", extra={"sessionId": key[1]}
                    )
                    await _nak(msg)
        finally:
            slot.worker = None

    async def _run(self, key: _Key, slot: _Slot, msg: Msg, cmd: EditCommand) -> None:
        started = time.perf_counter()
        async with slot.lock:
            try:
                verdict = await self._edit(key, slot, cmd)
            except Exception:
                log.exception("edit failed; will be redelivered", extra={"sessionId": key[1]})
                slot.state = None
                verdict = "retry"
            if verdict == "expired":
                # The gateway has answered `unavailable`; applying it now would make that a lie.
                EDITS.labels("expired").inc()
                await msg.ack()
                return
            if verdict == "retry":
                EDITS.labels("retry").inc()
                await msg.nak(delay=0.5)
                return
            assert not isinstance(verdict, str)
            await self.nc.publish(subjects.gateway_replies(cmd.origin.gatewayId), encode(verdict))
            EDITS.labels(verdict.error or "ok").inc()
            EDIT_SECONDS.observe(time.perf_counter() - started)
            await msg.ack()
            state = slot.state
            if state is not None and state.snapshot_due(self.settings.snapshot_every):
                await self._snapshot(state)

    async def _edit(self, key: _Key, slot: _Slot, cmd: EditCommand, retry: bool = True) -> _Verdict:
        """Apply one edit (the caller holds ``slot.lock``): its result, ``"retry"`` to try again
        later (redelivery) or ``"expired"`` when its deadline has passed."""
        state = await self._state(key, slot)
        dup = state.duplicate(cmd.origin.userId, cmd.clientId, cmd.requestId)
        if dup is not None:
            # Logged already, maybe never broadcast (a crash in between): the others need it.
            await self._broadcast_unsent(state, cmd)
            return "expired" if now_ms() > cmd.deadline else _ok(cmd, dup)
        now = now_ms()
        if now > cmd.deadline:  # checked again: the lock and the load may have taken a while
            return "expired"
        try:
            events = state.prepare(cmd, now)
        except OTError as exc:
            code, message, data = refusal(exc)
            return CommandResult(
                requestId=cmd.requestId,
                connectionId=cmd.origin.connectionId,
                clientId=cmd.clientId,
                error=code,
                message=message,
                data=data,
            )
        if not events:
            return _ok(cmd, state.unchanged(cmd, now))
        # All parts in one atomic batch: a split delete is stored whole or not at all.
        timeout = max((cmd.deadline - now_ms()) / 1000, MIN_APPEND_S)
        try:
            first = await self.store.append_edit(events, state.last_seq, timeout)
        except Conflict:
            # Another writer, or (some of) this edit stored before a crash: the log is right.
            slot.state = None
            if not retry:
                return "retry"
            return await self._edit(key, slot, cmd, retry=False)
        except (TimeoutError, nats.errors.Error, APIError, BatchRefused) as exc:
            log.warning("append failed", extra={"error": repr(exc), "sessionId": key[1]})
            slot.state = None  # the document ran ahead of the log; reload it
            return "retry"
        for i, ev in enumerate(events):
            state.record(ev, first + i)
        for ev in events:
            await self._broadcast_edit(ev, cmd.origin.connectionId)
            state.broadcast(ev)
        return _ok(cmd, Outcome(events[-1].version, events[0].position, len(events)))

    async def _broadcast_unsent(self, state: DocState, cmd: EditCommand) -> None:
        for ev in state.unsent(cmd.origin.userId, cmd.clientId, cmd.requestId):
            await self._broadcast_edit(ev, cmd.origin.connectionId)
            state.broadcast(ev)

    async def _broadcast_edit(self, ev: EditApplied, sender: str) -> None:
        frame = encode_frame("edit", ms_to_ts(ev.ts), edit_frame_data(ev))
        headers = {subjects.HDR_SEQ: str(ev.version), subjects.HDR_EXCEPT_CONN: sender}
        await self.nc.publish(
            subjects.collab_live(ev.contextId, ev.sessionId), frame, headers=headers
        )

    async def _snapshot(self, state: DocState) -> None:
        horizon = now_ms() - int(self.settings.dedup_window_s * 1000)
        snap = state.snapshot_event(now_ms(), horizon)
        try:
            ack = await self.store.append_snapshot(snap)
        except (TimeoutError, nats.errors.Error, APIError) as exc:
            # Harmless: the next edit tries again, and a rebuild just replays more edits.
            log.warning("snapshot not stored", extra={"error": repr(exc), "version": snap.version})
            return
        state.snapshot_version, state.snapshot_seq = snap.version, ack.seq

    # --- join / leave / snapshot / heartbeats ---------------------------------------------
    async def _on_rpc(self, msg: Msg) -> None:
        # One task per request: a join that has to load its document must not hold up others.
        self._spawn(self._rpc(msg), "collab-rpc")

    async def _rpc(self, msg: Msg) -> None:
        try:
            req = _rpc_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable collaboration request dropped")
            return
        try:
            reply = await self._answer(req)
        except (TimeoutError, nats.errors.Error, APIError) as exc:
            log.warning("collaboration request failed", extra={"error": repr(exc)})
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

    async def _on_heartbeat(self, msg: Msg) -> None:
        await self.presence.on_heartbeat(msg, time.monotonic())

    async def _read(self, ctx: str, session: str, participants: bool = True) -> CollabReply:
        key = (ctx, session)
        slot = self._slot(key)
        async with slot.lock:
            doc = (await self._state(key, slot)).doc
            content, version = doc.content, doc.version
        people = self.presence.members(ctx, session) if participants else []
        return CollabReply(content=content, version=version, participants=people)

    async def _ticker(self) -> None:
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
            for key, slot in list(self._slots.items()):
                idle = slot.worker is None and not slot.queue and not slot.lock.locked()
                if idle and now - slot.touched > IDLE_S:
                    del self._slots[key]
                elif slot.state is not None:
                    slot.state.forget_before(horizon)


async def _nak(msg: Msg) -> None:
    try:
        await msg.nak(delay=0.5)
    except Exception as exc:  # NATS away: redelivered after ack_wait anyway
        log.warning("nak failed", extra={"error": repr(exc)})


def _ok(cmd: EditCommand, outcome: Outcome) -> CommandResult:
    return CommandResult(
        requestId=cmd.requestId,
        connectionId=cmd.origin.connectionId,
        clientId=cmd.clientId,
        ok=outcome.ack(),
    )
