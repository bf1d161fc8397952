"""From a stored event (stream sequence, subject, bytes) to a row of the ``events`` table.

Sans-I/O. Every message of the log becomes either a ``Row`` or an ``Invalid`` record, never an
exception: an event another system published straight onto its subject may be malformed (a
missing score, a score above ``maxScore``), and the aggregator must record and skip it, not stop.

Known event types are decoded strictly with their schema (``shared.schemas.events``); a type the
schema does not know yet (a newer producer) is still stored generically from its common fields
(``type``, ``contextId``, ``ts``), so it counts as activity and replay keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import msgspec
from msgspec import Meta, Struct

from shared import subjects
from shared.schemas.events import (
    AssessmentSubmitted,
    ChatMessagePosted,
    CollabUserConnected,
    CollabUserDisconnected,
    DocumentSnapshot,
    EditApplied,
    ParticipantJoined,
    ParticipantLeft,
    UserJoined,
    UserLeft,
    decode_event,
)

__all__ = ["Row", "Invalid", "to_row", "COLUMNS", "touches"]

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
