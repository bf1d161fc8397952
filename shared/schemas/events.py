"""Events in the log (stream AG_EVENTS) and the commands/results services exchange.

Evolution rules: a stored event's ``type`` tag never changes; new fields get defaults; an
incompatible change gets a new tag and the old one is upcast on read. Times are epoch ms (``ts``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "Event",
    "ChatMessagePosted",
    "UserJoined",
    "UserLeft",
    "AssessmentSubmitted",
    "EditApplied",
    "ParticipantJoined",
    "ParticipantLeft",
    "DocumentSnapshot",
    "CollabUserConnected",
    "CollabUserDisconnected",
    "decode_event",
    "dedup_key",
    "encode_event",
]


class _Event(Struct, frozen=True, tag_field="type", kw_only=True):
    contextId: str
    ts: int


class ChatMessagePosted(_Event, frozen=True, tag="chat.message"):
    messageId: str
    seq: int
    userId: str
    userName: str
    content: str
    messageType: str = "text"
    clientId: str | None = None
    # The gateway's id of the command, for a frame sent without an ``id``: a redelivered command
    # is still found (and stored once) by it. None when ``clientId`` is set.
    requestId: str | None = None


class UserJoined(_Event, frozen=True, tag="chat.user_joined"):
    userId: str
    userName: str


class UserLeft(_Event, frozen=True, tag="chat.user_left"):
    userId: str
    userName: str


Score = Annotated[float, Meta(ge=0)]


class AssessmentSubmitted(_Event, frozen=True, tag="learning.assessment_submitted"):
    userId: Annotated[str, Meta(min_length=1, max_length=256)]
    assessmentId: Annotated[str, Meta(min_length=1, max_length=256)]
    score: Score
    maxScore: Annotated[float, Meta(gt=0)]
    completed: bool = True


class EditApplied(_Event, frozen=True, tag="collab.edit"):
    sessionId: str
    version: int
    operation: Literal["insert", "delete"]
    position: int
    userId: str
    userName: str
    content: str = ""
    length: int = 0
    clientId: str | None = None
    part: int = 0  # 0, or 1 for the second half of a delete split by a concurrent insert
    requestId: str | None = None  # as in ChatMessagePosted: set only when clientId is None


class ParticipantJoined(_Event, frozen=True, tag="collab.participant_joined"):
    sessionId: str
    userId: str
    userName: str
    role: str


class ParticipantLeft(_Event, frozen=True, tag="collab.participant_left"):
    sessionId: str
    userId: str
    userName: str


class CollabUserConnected(_Event, frozen=True, tag="collab.user_connected"):
    """A user's first collaboration socket in the context opened (joined session or not)."""

    userId: str
    userName: str


class CollabUserDisconnected(_Event, frozen=True, tag="collab.user_disconnected"):
    """A user's last collaboration socket in the context closed."""

    userId: str
    userName: str


class DocumentSnapshot(_Event, frozen=True, tag="collab.snapshot"):
    sessionId: str
    version: int
    content: str
    # Stream sequence of the edit event that produced ``version``: a rebuild replays the edits
    # after it. 0 (older snapshots): replay the subject from its start, skipping older versions.
    editSeq: int = 0
    # Stream sequence of the oldest edit still inside the dedup window when the snapshot was
    # taken (0: none), so a rebuild also re-learns the recent client ids. Must not exceed editSeq.
    dedupFrom: int = 0
    # Stream sequence of the snapshot before this one (0: none). A rebuild starts from that one,
    # so the rebuilt document keeps at least AG_SNAPSHOT_EVERY operations of history.
    previousSeq: int = 0
    # A document too large for one message as JSON (many escaped control characters) is stored
    # here instead, zlib-compressed UTF-8 in base64, with ``content`` empty.
    contentZlib: str = ""


Event = (
    ChatMessagePosted
    | UserJoined
    | UserLeft
    | AssessmentSubmitted
    | EditApplied
    | ParticipantJoined
    | ParticipantLeft
    | CollabUserConnected
    | CollabUserDisconnected
    | DocumentSnapshot
)


def dedup_key(
    user_id: str, client_id: str | None, request_id: str | None
) -> tuple[str, str] | None:
    """What makes a command (and the events it logged) the same on redelivery or re-send: the
    client's frame id per user, else the gateway's command id (user ids are never empty, so the
    two kinds of key cannot collide). None for an event that carries neither."""
    if client_id is not None:
        return (user_id, client_id)
    if request_id:
        return ("", request_id)
    return None


_DECODER = msgspec.json.Decoder(Event)
_ENCODER = msgspec.json.Encoder()


def decode_event(raw: bytes) -> Event:
    event: Event = _DECODER.decode(raw)
    return event


def encode_event(event: Event) -> bytes:
    return _ENCODER.encode(event)
