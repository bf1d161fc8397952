"""From a stored event (stream sequence, subject, bytes) to a row of the ``events`` table.

Sans-I/O. Every message of the log becomes either a ``Row`` or an ``Invalid`` record, never an
exception: an event another system published straight onto its subject may be malformed (a
missing score, a score above ``maxScore``), and the aggregator must record and skip it, not stop.

Known event types are decoded strictly with their schema (``shared.schemas.events``); a type the
schema does not know yet (a newer producer) is still stored generically from its common fields
(``type``, ``contextId``, ``ts``), so it counts as activity and replay keeps it.

Two ways, one result. ``columns`` takes a whole batch at once, the fast path: one msgspec call
decodes every event strictly (a JSON array of the payloads into the tagged union), the checks run
per event, and the values go straight into columns for one Arrow insert. If anything in the
batch is not a known, valid event, that call fails and the batch takes ``to_row`` per event,
which says what is wrong with each one. Both give the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import msgspec
from msgspec import Meta, Struct

from shared import subjects
from shared.bus.port import Entry
from shared.schemas.events import (
    AssessmentSubmitted,
    ChatMessagePosted,
    CollabUserConnected,
    CollabUserDisconnected,
    DocumentSnapshot,
    EditApplied,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    UserJoined,
    UserLeft,
    decode_event,
)

__all__ = [
    "Columns",
    "Row",
    "Invalid",
    "to_row",
    "COLUMNS",
    "columns",
    "rows_to_columns",
    "touches",
]

COLUMNS = (
    "seq",
    "ts",
    "type",
    "context_id",
    "user_id",
    "session_id",
    "assessment_id",
    "score",
    "max_score",
    "completed",
    "subject",
    "raw",
)


class Row(NamedTuple):
    seq: int
    ts: int
    type: str
    context_id: str
    user_id: str | None
    session_id: str | None
    assessment_id: str | None
    score: float | None
    max_score: float | None
    completed: bool | None
    subject: str
    raw: str


@dataclass(frozen=True, slots=True)
class Invalid:
    seq: int
    subject: str
    reason: str
    raw: bytes


MAX_TS = 10**15  # epoch ms in the year 33658: anything later is not a time, and fits BIGINT


class _Head(Struct):
    type: Annotated[str, Meta(min_length=1, max_length=128)]
    contextId: Annotated[str, Meta(min_length=1)]
    ts: Annotated[int, Meta(ge=0, le=MAX_TS)]


_head = msgspec.json.Decoder(_Head)
_any = msgspec.json.Decoder()
_KNOWN = {
    cls.__struct_config__.tag
    for cls in (
        ChatMessagePosted,
        UserJoined,
        UserLeft,
        AssessmentSubmitted,
        EditApplied,
        ParticipantJoined,
        ParticipantLeft,
        CollabUserConnected,
        CollabUserDisconnected,
        DocumentSnapshot,
    )
}
_ENGAGEMENT = frozenset(
    {
        "chat.message",
        "chat.user_joined",
        "chat.user_left",
        "collab.edit",
        "collab.participant_joined",
        "collab.participant_left",
        "collab.user_connected",
        "collab.user_disconnected",
    }
)


def touches(event_type: str) -> tuple[str, ...]:
    """The metrics an event of this type can change (activity counts every event)."""
    if event_type == "collab.snapshot":
        return ()
    if event_type in _ENGAGEMENT:
        return ("activity", "engagement")
    if event_type == "learning.assessment_submitted":
        return ("activity", "performance")
    return ("activity",)


def to_row(seq: int, subject: str, data: bytes) -> Row | Invalid:
    try:
        ev = decode_event(data)  # the common case: one strict decode
    except msgspec.DecodeError as exc:
        return _not_known(seq, subject, data, exc)
    if not ev.contextId or not 0 <= ev.ts <= MAX_TS:
        return Invalid(seq, subject, "contextId must be set and ts a time in epoch ms", data)
    raw = data.decode()  # msgspec has checked it is UTF-8
    base = (seq, ev.ts, str(ev.__struct_config__.tag), ev.contextId)
    match ev:
        case AssessmentSubmitted():
            problem = _assessment_problem(ev, subject)
            if problem:
                return Invalid(seq, subject, problem, data)
            return Row(
                *base,
                ev.userId,
                None,
                ev.assessmentId,
                ev.score,
                ev.maxScore,
                ev.completed,
                subject,
                raw,
            )
        case EditApplied() | ParticipantJoined() | ParticipantLeft():
            return Row(*base, ev.userId, ev.sessionId, None, None, None, None, subject, raw)
        case DocumentSnapshot():
            return Row(*base, None, ev.sessionId, None, None, None, None, subject, raw)
        case (
            ChatMessagePosted()
            | UserJoined()
            | UserLeft()
            | CollabUserConnected()
            | CollabUserDisconnected()
        ):
            return Row(*base, ev.userId, None, None, None, None, None, subject, raw)
    return Invalid(seq, subject, f"unhandled type {base[2]}", data)  # pragma: no cover


def _not_known(seq: int, subject: str, data: bytes, error: Exception) -> Row | Invalid:
    """Not a valid known event: a type this version does not know yet, or invalid."""
    try:
        head = _head.decode(data)
    except msgspec.DecodeError as exc:
        return Invalid(seq, subject, f"not an event: {exc}", data)
    if head.type in _KNOWN:
        return Invalid(seq, subject, f"bad {head.type}: {error}", data)
    return _generic(seq, subject, head, data.decode(), data)


def _assessment_problem(ev: AssessmentSubmitted, subject: str) -> str | None:
    if not (math.isfinite(ev.score) and math.isfinite(ev.maxScore)):
        return "score and maxScore must be finite"
    if ev.score > ev.maxScore:
        return "score exceeds maxScore"
    # Learning events come from other systems: the subject's context must match the payload's.
    parts = subject.split(".")
    if len(parts) > 3 and parts[3] != subjects.token(ev.contextId):
        return "contextId does not match the subject"
    return None


def _generic(seq: int, subject: str, head: _Head, raw: str, data: bytes) -> Row:
    obj: Any = _any.decode(data)
    user = obj.get("userId") if isinstance(obj, dict) else None
    session = obj.get("sessionId") if isinstance(obj, dict) else None
    return Row(
        seq,
        head.ts,
        head.type,
        head.contextId,
        user if isinstance(user, str) else None,
        session if isinstance(session, str) else None,
        None,
        None,
        None,
        None,
        subject,
        raw,
    )


Columns = dict[str, list[Any]]
_BATCH = msgspec.json.Decoder(list[Event])


def columns(batch: Sequence[Entry]) -> tuple[Columns, list[Invalid]] | None:
    """The batch as ``events`` columns (and the events it refuses), or None when the batch
    holds something that is not a known event: then each goes through ``to_row``."""
    datas = [e.data for e in batch]
    try:
        events = _BATCH.decode(b"[" + b",".join(datas) + b"]")
    except msgspec.DecodeError:
        return None
    ctx = [e.contextId for e in events]
    ts = [e.ts for e in events]
    suspects = [i for i, e in enumerate(events) if e.__class__ is AssessmentSubmitted]
    if not all(ctx) or min(ts, default=0) < 0 or max(ts, default=0) > MAX_TS:
        suspects = list(range(len(events)))  # rare: look at each (list scans run in C)
    refused: list[Invalid] = []
    drop: set[int] = set()
    for i in suspects:
        ev, entry = events[i], batch[i]
        problem: str | None = None
        if not ev.contextId or not 0 <= ev.ts <= MAX_TS:
            problem = "contextId must be set and ts a time in epoch ms"
        elif isinstance(ev, AssessmentSubmitted):
            problem = _assessment_problem(ev, entry.subject)
        else:
            continue
        if problem:
            refused.append(Invalid(entry.seq, entry.subject, problem, entry.data))
            drop.add(i)
    if drop:
        keep = [i for i in range(len(events)) if i not in drop]
        events = [events[i] for i in keep]
        batch = [batch[i] for i in keep]
        datas = [datas[i] for i in keep]
        ctx = [ctx[i] for i in keep]
        ts = [ts[i] for i in keep]
    cols: Columns = {
        "seq": [e.seq for e in batch],
        "ts": ts,
        "type": [e.__struct_config__.tag for e in events],
        "context_id": ctx,
        "user_id": [getattr(e, "userId", None) for e in events],
        "session_id": [getattr(e, "sessionId", None) for e in events],
        "assessment_id": [getattr(e, "assessmentId", None) for e in events],
        "score": [getattr(e, "score", None) for e in events],
        "max_score": [getattr(e, "maxScore", None) for e in events],
        "completed": [getattr(e, "completed", None) for e in events],
        "subject": [e.subject for e in batch],
        "raw": datas,  # bytes: checked UTF-8 by the decode, turned to text by Arrow
    }
    return cols, refused


def rows_to_columns(rows: list[Row]) -> Columns:
    """``to_row``'s rows as columns (``raw`` as bytes, as ``columns`` gives it)."""
    if not rows:
        return {name: [] for name in COLUMNS}
    cols = {
        name: list(values) for name, values in zip(COLUMNS, zip(*rows, strict=True), strict=True)
    }
    cols["raw"] = [r.encode() for r in cols["raw"]]
    return cols
