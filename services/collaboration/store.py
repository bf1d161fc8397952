"""The collaboration service's side of the event log: load documents, append their events.

A document is loaded from a ``DocumentSnapshot`` plus the edit events after its ``editSeq``, read
with a per-subject consumer. The snapshot is the one before the newest (found by the newest's
``previousSeq``; two direct gets, the stream allows direct reads), so the rebuilt document keeps
at least ``AG_SNAPSHOT_EVERY`` operations of history and clients a little behind can still edit
on their version after a restart. A rebuild therefore reads fewer than ``2 * AG_SNAPSHOT_EVERY``
edits, plus those of the last ``AG_DEDUP_WINDOW_S`` (``dedupFrom``) to re-learn recent client
ids, never the document's whole history.

Edits are appended by the command worker (``shared/worker.py``): the events of a batch of edits
(a split delete is two) go to the log as one atomic batch with the document's last edit event
expected, so two writers can never log two operations with one version. ``edit_msg_id`` is
derived from (context, session, user, client id or request id, part), so a command redelivered
after a crash is stored once.
"""

from __future__ import annotations

import uuid

from shared import subjects
from shared.bus.pipe import AppendPipe
from shared.bus.port import Appended, Bus
from shared.config import Settings
from shared.eventlog import decode_logged
from shared.logs import get_logger
from shared.schemas.events import (
    CollabUserConnected,
    CollabUserDisconnected,
    DocumentSnapshot,
    EditApplied,
    ParticipantJoined,
    ParticipantLeft,
    dedup_key,
    encode_event,
)
from shared.timefmt import now_ms

from .ot_errors import VersionMismatch
from .state import DocState, snapshot_payload

__all__ = ["DocStore", "edit_msg_id"]

log = get_logger(__name__)

_PAYLOAD_MARGIN = 4096  # headers and subject share the message with the payload


def edit_msg_id(ev: EditApplied) -> str:
    """The same for every delivery of one edit command (or a re-sent frame id), per part."""
    key = dedup_key(ev.userId, ev.clientId, ev.requestId)
    if key is None:  # an event built without either id (not by this service)
        return uuid.uuid4().hex
    t = subjects.token
    parts = (ev.contextId, ev.sessionId, key[0] or "~", key[1])
    # token() keeps the id header-safe: a client id may hold any character, even CR/LF
    return "collab:" + ":".join(t(p) for p in parts) + f":{ev.part}"


class DocStore:
    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.snapshot_limit = max(bus.max_payload - _PAYLOAD_MARGIN, 1024)
        self.presence_log = AppendPipe(bus, "collaboration presence")

    def _new(self, context_id: str, session_id: str) -> DocState:
        return DocState(
            context_id,
            session_id,
            max_history=self.settings.collab_history,
            max_bytes=self.settings.doc_max_bytes,
        )

    async def load(self, context_id: str, session_id: str) -> DocState:
        snapshots = subjects.collab_snapshots(context_id, session_id)
        newest = await self._snapshot(snapshots)
        base = None
        if newest is not None and newest[0].previousSeq:
            found = await self._snapshot(snapshots, newest[0].previousSeq)
            base = found[0] if found else None
        try:
            return await self._rebuild(context_id, session_id, newest, base)
        except VersionMismatch:
            if base is None:
                raise
            # Edits between the two snapshots are missing (removed from the stream by hand?):
            # the newest snapshot alone still gives the document, with a shorter history.
            log.warning("edit events missing; rebuilt from the newest snapshot only")
            return await self._rebuild(context_id, session_id, newest, None)

    async def _rebuild(
        self,
        context_id: str,
        session_id: str,
        newest: tuple[DocumentSnapshot, int] | None,
        base: DocumentSnapshot | None,
    ) -> DocState:
        state = self._new(context_id, session_id)
        snaps: list[DocumentSnapshot] = []
        if newest is not None:
            snaps = [base, newest[0]] if base is not None else [newest[0]]
            state.restore(snaps[0], *newest)
        horizon = now_ms() - int(self.settings.dedup_window_s * 1000)
        count = 0
        subject = subjects.collab_edits(context_id, session_id)
        for entry in await self.bus.read(subject, DocState.replay_from(*snaps)):
            ev = decode_logged(entry.data, entry.seq, entry.subject, "collaboration")
            if isinstance(ev, EditApplied):
                state.replay(ev, entry.seq, horizon)
                count += 1
            else:  # skipped, but still the subject's last entry for the next append
                state.last_seq = max(state.last_seq, entry.seq)
        log.info(
            "document loaded",
            extra={
                "contextId": context_id,
                "sessionId": session_id,
                "version": state.doc.version,
                "from": snaps[0].version if snaps else None,
                "replayed": count,
            },
        )
        return state

    async def _snapshot(
        self, subject: str, seq: int | None = None
    ) -> tuple[DocumentSnapshot, int] | None:
        """The newest snapshot on ``subject`` (or the one at ``seq``), with its stream sequence."""
        if seq is None:
            entry = (await self.bus.last([subject])).get(subject)
        else:
            found = await self.bus.read(subject, seq, limit=1)
            entry = found[0] if found and found[0].seq == seq else None
        if entry is None:
            return None
        ev = decode_logged(entry.data, entry.seq, subject, "collaboration")
        if not isinstance(ev, DocumentSnapshot):
            return None
        return ev, entry.seq

    async def append_snapshot(self, snap: DocumentSnapshot) -> Appended:
        t = subjects.token
        msg_id = f"collab-snap:{t(snap.contextId)}:{t(snap.sessionId)}:{snap.version}"
        return await self.bus.append(
            subjects.collab_snapshots(snap.contextId, snap.sessionId),
            snapshot_payload(snap, self.snapshot_limit),
            msg_id=msg_id,
        )

    def log_presence(self, ev: ParticipantJoined | ParticipantLeft) -> None:
        """Log a join/leave without waiting for it (``shared/bus/pipe.py``)."""
        subject = subjects.collab_presence(ev.contextId, ev.sessionId)
        self.presence_log.put(subject, encode_event(ev), uuid.uuid4().hex)

    def log_online(self, ev: CollabUserConnected | CollabUserDisconnected) -> None:
        subject = subjects.collab_connections(ev.contextId)
        self.presence_log.put(subject, encode_event(ev), uuid.uuid4().hex)
