"""One document as the collaboration service holds it: a projection of its events (sans-I/O).

``DocState`` wraps the OT core's ``Document`` with what the event log adds: the stream sequence
of the last edit event (for ``Nats-Expected-Last-Subject-Sequence``), the dedup index of client
frame ids (rebuilt from the events' ``clientId``, or ``requestId`` for a frame sent without an id)
and the snapshot bookkeeping.

``prepare`` turns an edit command into the events to append and applies them to the document at
once; ``record`` notes each one once it is in the log. If an append fails, the caller throws the
state away and loads it again from the log, which is the only truth. ``restore`` and ``replay``
rebuild a state from the latest snapshot and the edit events after it.

A state also knows which of its logged edits this process has broadcast (``broadcast``): those
it applied and sent itself, or sent again, since it was loaded. Everything read back from the log
counts as not broadcast, so an edit found in the dedup index (a command redelivered after a crash
between the append and the broadcast, or re-sent by its client) is broadcast again (``unsent``),
once per process; clients apply by version and ignore versions they already have.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.schemas.commands import EditCommand, command_key
from shared.schemas.events import DocumentSnapshot, EditApplied, dedup_key, encode_event
from shared.schemas.frames import Author, EditData

from .document import Document
from .ot import Delete, Insert, Op
from .ot_errors import OTError
from .utf16 import utf16_len

__all__ = [
    "BadEdit",
    "DocState",
    "Outcome",
    "edit_data",
    "edit_frame_data",
    "snapshot_payload",
    "snapshot_text",
]


class BadEdit(OTError):
    """An edit command that does not describe an operation (insert without content, ...)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the sender's ``ack`` says: the last version, the first part's position, and how
    many versions the edit produced (0 when it transformed to nothing, 2 for a split delete)."""

    version: int
    position: int
    parts: int

    def ack(self) -> dict[str, Any]:
        return {"version": self.version, "position": self.position, "parts": self.parts}


@dataclass(slots=True)
class _Seen:
    outcome: Outcome
    ts: int  # epoch ms of the edit, for the dedup window
    seq: int  # stream sequence of its first event (0: nothing was logged)
    events: list[EditApplied]  # its logged parts, in order (to broadcast them again)
    sent: bool = False  # all of them were broadcast by this process


def edit_data(ev: EditApplied) -> EditData:
    """The ``edit`` broadcast for one logged part: a delete carries no text, only its length."""
    return EditData(
        sessionId=ev.sessionId,
        operation=ev.operation,
        position=ev.position,
        length=ev.length,
        version=ev.version,
        author=Author(ev.userId, ev.userName),
        content=ev.content if ev.operation == "insert" else None,
    )


def edit_frame_data(ev: EditApplied) -> dict[str, Any]:
    """``edit_data`` as JSON values."""
    out: dict[str, Any] = msgspec.to_builtins(edit_data(ev))
    return out


def _op(ev: EditApplied) -> Op:
    if ev.operation == "insert":
        return Insert(ev.position, ev.content)
    return Delete(ev.position, ev.length)


class DocState:
    __slots__ = (
        "context_id",
        "session_id",
        "doc",
        "last_seq",
        "snapshot_version",
        "snapshot_seq",
        "_dedup",
    )

    def __init__(
        self, context_id: str, session_id: str, *, max_history: int, max_bytes: int
    ) -> None:
        self.context_id = context_id
        self.session_id = session_id
        self.doc = Document(max_history=max_history, max_bytes=max_bytes)
        self.last_seq = 0  # stream sequence of the newest edit event of this document
        self.snapshot_version = 0  # version of the newest snapshot in the log
        self.snapshot_seq = 0  # and its stream sequence
        self._dedup: dict[tuple[str, str], _Seen] = {}

    # --- rebuilding from the log ------------------------------------------------------------
    def restore(self, base: DocumentSnapshot, newest: DocumentSnapshot, newest_seq: int) -> None:
        """Start from ``base`` (the snapshot before the newest, for a longer history, or the
        newest itself); the edit events after it are replayed next."""
        self.doc.restore(snapshot_text(base), base.version)
        self.last_seq = max(self.last_seq, base.editSeq)
        self.snapshot_version = newest.version
        self.snapshot_seq = newest_seq

    def replay(self, ev: EditApplied, seq: int, horizon_ms: int) -> None:
        """An edit event read back from the log, in log order. Versions the document already has
        (the replay started early, for the dedup index) only feed the index."""
        self.doc.replay(_op(ev), ev.version)
        if ev.ts >= horizon_ms:
            self._remember(ev, seq)
        self.last_seq = max(self.last_seq, seq)

    # --- edits ------------------------------------------------------------------------------
    def duplicate(
        self, user_id: str, client_id: str | None, request_id: str | None = None
    ) -> Outcome | None:
        """The outcome of the edit already handled under this ``dedup_key``, if any."""
        key = dedup_key(user_id, client_id, request_id)
        seen = self._dedup.get(key) if key is not None else None
        return seen.outcome if seen else None

    def unsent(
        self, user_id: str, client_id: str | None, request_id: str | None = None
    ) -> list[EditApplied]:
        """The logged parts of an edit already handled (see ``duplicate``) if this process has
        not broadcast them (they were read back from the log); else ``[]``."""
        key = dedup_key(user_id, client_id, request_id)
        seen = self._dedup.get(key) if key is not None else None
        if seen is None or seen.sent:
            return []
        return list(seen.events)

    def broadcast(self, ev: EditApplied) -> None:
        """``ev`` (a logged part) has been broadcast by this process."""
        key = dedup_key(ev.userId, ev.clientId, ev.requestId)
        seen = self._dedup.get(key) if key is not None else None
        if seen is not None and seen.events and seen.events[-1] == ev:
            seen.sent = True  # the last part: the whole edit is out

    def prepare(self, cmd: EditCommand, now_ms: int) -> list[EditApplied]:
        """Transform and apply ``cmd``; the events to append, in order (``[]``: nothing changed).

        Raises an ``OTError`` (and changes nothing) when the edit cannot be applied.
        """
        op: Op
        if cmd.operation == "insert":
            if not cmd.content:
                raise BadEdit("an insert needs non-empty content")
            if cmd.length is not None and cmd.length != utf16_len(cmd.content):
                raise BadEdit("insert length differs from the UTF-16 length of its content")
            op, expected = Insert(cmd.position, cmd.content), None
        elif cmd.operation == "delete":
            if cmd.length is None or cmd.length < 1:
                raise BadEdit("a delete needs a positive length")
            op, expected = Delete(cmd.position, cmd.length), cmd.content
        else:
            raise BadEdit(f"unknown operation {cmd.operation!r}")
        applied = self.doc.submit(op, cmd.version, expected)
        user = cmd.origin
        return [
            EditApplied(
                contextId=self.context_id,
                ts=now_ms,
                sessionId=self.session_id,
                version=version,
                operation="insert" if isinstance(done, Insert) else "delete",
                position=done.position,
                userId=user.userId,
                userName=user.userName,
                content=done.content if isinstance(done, Insert) else "",
                length=done.length,
                clientId=cmd.clientId,
                part=part,
                requestId=cmd.requestId if cmd.clientId is None else None,
            )
            for part, (done, version) in enumerate(applied)
        ]

    def record(self, ev: EditApplied, seq: int) -> None:
        """``ev`` (from ``prepare``) is now in the log at stream sequence ``seq``."""
        self._remember(ev, seq)
        self.last_seq = seq

    def unchanged(self, cmd: EditCommand, now_ms: int) -> Outcome:
        """An edit that transformed to nothing: acked with the current version, and again so
        if re-sent (in memory only: nothing was logged)."""
        outcome = Outcome(self.doc.version, cmd.position, 0)
        self._dedup[command_key(cmd)] = _Seen(outcome, now_ms, 0, [])
        return outcome

    def _remember(self, ev: EditApplied, seq: int) -> None:
        key = dedup_key(ev.userId, ev.clientId, ev.requestId)
        if key is None:
            return
        seen = self._dedup.get(key)
        if ev.part == 0 or seen is None:
            self._dedup[key] = _Seen(Outcome(ev.version, ev.position, 1), ev.ts, seq, [ev])
        else:  # a later part of the same edit: the ack names the last version
            first = seen.outcome
            seen.outcome = Outcome(ev.version, first.position, first.parts + 1)
            seen.events.append(ev)

    def forget_before(self, horizon_ms: int) -> None:
        """Drop dedup entries older than the window (kept at least that long, as promised)."""
        for key in [k for k, v in self._dedup.items() if v.ts < horizon_ms]:
            del self._dedup[key]

    # --- snapshots --------------------------------------------------------------------------
    def snapshot_due(self, every: int) -> bool:
        return self.doc.version // every > self.snapshot_version // every

    def snapshot_event(self, now_ms: int, horizon_ms: int) -> DocumentSnapshot:
        # Entries are recorded in log order, so the first one still in the window has the
        # smallest sequence of them all: no need to scan the whole window (it can hold 100k's).
        first = next((v.seq for v in self._dedup.values() if v.seq and v.ts >= horizon_ms), 0)
        return DocumentSnapshot(
            contextId=self.context_id,
            ts=now_ms,
            sessionId=self.session_id,
            version=self.doc.version,
            content=self.doc.content,
            editSeq=self.last_seq,
            dedupFrom=first,
            previousSeq=self.snapshot_seq,
        )

    @staticmethod
    def replay_from(*snaps: DocumentSnapshot) -> int:
        """The stream sequence to replay a document's edit events from, after these snapshots."""
        starts = [1]
        for snap in snaps:
            if not snap.editSeq:
                return 1  # written before editSeq existed: read the subject from its start
            starts.append(snap.editSeq + 1)
            if snap.dedupFrom:
                starts.append(snap.dedupFrom)
        return min(starts[1:]) if snaps else 1


def snapshot_text(snap: DocumentSnapshot) -> str:
    if snap.contentZlib:
        return zlib.decompress(base64.b64decode(snap.contentZlib)).decode("utf-8")
    return snap.content


def snapshot_payload(snap: DocumentSnapshot, limit: int) -> bytes:
    """The snapshot event as stored: plain JSON, or the content compressed when the JSON would
    not fit in one message of ``limit`` bytes."""
    raw = encode_event(snap)
    if len(raw) <= limit:
        return raw
    packed = base64.b64encode(zlib.compress(snap.content.encode("utf-8"), 6)).decode("ascii")
    return encode_event(
        DocumentSnapshot(
            contextId=snap.contextId,
            ts=snap.ts,
            sessionId=snap.sessionId,
            version=snap.version,
            content="",
            editSeq=snap.editSeq,
            dedupFrom=snap.dedupFrom,
            previousSeq=snap.previousSeq,
            contentZlib=packed,
        )
    )
