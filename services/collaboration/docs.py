"""Documents as the command worker drives them: the collaboration service's aggregate.

``decide`` takes a batch of edit commands for one document, in the order they were stored, and
runs each through the document (``DocState.prepare``: transform against everything applied
since its version, apply): the events to append, in order, and each command's answer. All the
events of a batch (a split delete is two) are appended as one atomic batch with the document's
last edit event expected: group commit, one round trip for many edits. ``prepare`` applies to
the document at once, so a failed append makes the worker drop the state and reload it from the
log, which is the only truth.

A command already logged (a re-sent id, a redelivery after a crash between append and
broadcast) is answered from the dedup index, and its parts are broadcast again unless this
process broadcast them itself (``DocState.unsent``), so no editor stays a version short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from shared import subjects
from shared.bus.port import Bus, Unavailable
from shared.config import Settings
from shared.errors import protocol
from shared.logs import get_logger
from shared.partitions import collab_partition
from shared.schemas.commands import CommandResult, EditCommand, command_key
from shared.schemas.events import EditApplied, encode_event
from shared.schemas.wire import encode_frame
from shared.timefmt import ms_to_ts, now_ms
from shared.worker import Decision

from .ot_errors import OTError
from .state import DocState, Outcome, edit_data
from .store import DocStore, edit_msg_id

__all__ = ["CollabDocs", "DocKey", "decide"]

log = get_logger(__name__)

DocKey = tuple[str, str]  # (contextId, sessionId)
_edit_decoder = msgspec.json.Decoder(EditCommand)


@dataclass(slots=True)
class EditNotes:
    """Beyond the bytes: the new events (with each one's sender), and logged parts to send again."""

    new: list[tuple[EditApplied, str]] = field(default_factory=list)
    again: list[tuple[EditApplied, str]] = field(default_factory=list)


def decide(state: DocState, commands: Sequence[EditCommand], now: int) -> Decision[EditCommand]:
    notes = EditNotes()
    subject = subjects.collab_edits(state.context_id, state.session_id)
    # Edits stand alone, so a few may be chained; a command of two events (a delete split by
    # an insert) must be stored whole, so then the batch is atomic.
    decision = Decision[EditCommand](subject, state.last_seq, extra=notes, atomic=False)
    batch: dict[tuple[str, str], Outcome] = {}
    for cmd in commands:
        key = command_key(cmd)
        sender = cmd.origin.connectionId
        dup = state.duplicate(cmd.origin.userId, cmd.clientId, cmd.requestId) or batch.get(key)
        if dup is not None:
            for ev in state.unsent(cmd.origin.userId, cmd.clientId, cmd.requestId):
                notes.again.append((ev, sender))
            # past its deadline the gateway has answered already: broadcast, do not answer
            decision.results.append(_ok(cmd, dup) if now <= cmd.deadline else None)
            continue
        if now > cmd.deadline:  # the gateway has answered `unavailable`: keep that true
            decision.results.append(None)
            continue
        try:
            events = state.prepare(cmd, now)
        except OTError as exc:
            err = protocol(exc)
            decision.results.append(
                CommandResult(
                    requestId=cmd.requestId,
                    connectionId=cmd.origin.connectionId,
                    clientId=cmd.clientId,
                    error=err.code,
                    message=err.message,
                    data=err.data,
                )
            )
            continue
        if not events:
            outcome = state.unchanged(cmd, now)
        else:
            outcome = Outcome(events[-1].version, events[0].position, len(events))
            decision.atomic = decision.atomic or len(events) > 1
            for ev in events:
                notes.new.append((ev, sender))
                decision.events.append((edit_msg_id(ev), encode_event(ev)))
        batch[key] = outcome
        decision.results.append(_ok(cmd, outcome))
    return decision


def _ok(cmd: EditCommand, outcome: Outcome) -> CommandResult:
    return CommandResult(
        requestId=cmd.requestId,
        connectionId=cmd.origin.connectionId,
        clientId=cmd.clientId,
        ok=outcome.ack(),
    )


class CollabDocs:
    name = "collaboration"
    subjects = subjects.COLLAB_COMMANDS_ALL
    durable = "collab"

    def __init__(self, settings: Settings, bus: Bus, store: DocStore) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store

    def decode(self, data: bytes) -> EditCommand:
        return _edit_decoder.decode(data)

    def key(self, cmd: EditCommand) -> DocKey:
        return (cmd.contextId, cmd.sessionId)

    def deadline(self, cmd: EditCommand) -> int:
        return cmd.deadline

    def reply_to(self, cmd: EditCommand) -> str:
        return subjects.gateway_replies(cmd.origin.gatewayId)

    def partition_subjects(self, partition: int) -> str:
        return subjects.collab_commands_partition(partition)

    def partition(self, key: DocKey) -> int:
        return collab_partition(key[0], key[1], self.settings.partitions)

    async def load(self, key: DocKey) -> DocState:
        return await self.store.load(*key)

    def decide(
        self, state: DocState, cmds: Sequence[EditCommand], now: int
    ) -> Decision[EditCommand]:
        return decide(state, cmds, now)

    def commit(self, state: DocState, decision: Decision[EditCommand], seqs: Sequence[int]) -> None:
        notes: EditNotes = decision.extra
        for (ev, _), seq in zip(notes.new, seqs, strict=True):
            state.record(ev, seq)

    async def publish(self, state: DocState, decision: Decision[EditCommand]) -> None:
        notes: EditNotes = decision.extra
        for ev, sender in [*notes.again, *notes.new]:
            await self._broadcast(ev, sender)
            state.broadcast(ev)
        if state.snapshot_due(self.settings.snapshot_every):
            await self._snapshot(state)

    async def _broadcast(self, ev: EditApplied, sender: str) -> None:
        frame = encode_frame("edit", ms_to_ts(ev.ts), edit_data(ev))
        headers = {subjects.HDR_SEQ: str(ev.version), subjects.HDR_EXCEPT_CONN: sender}
        await self.bus.publish(subjects.collab_live(ev.contextId, ev.sessionId), frame, headers)

    async def _snapshot(self, state: DocState) -> None:
        horizon = now_ms() - int(self.settings.dedup_window_s * 1000)
        snap = state.snapshot_event(now_ms(), horizon)
        try:
            done = await self.store.append_snapshot(snap)
        except Unavailable as exc:
            # Harmless: the next edit tries again, and a rebuild just replays more edits.
            log.warning("snapshot not stored", extra={"error": str(exc), "version": snap.version})
            return
        state.snapshot_version, state.snapshot_seq = snap.version, done.seq
