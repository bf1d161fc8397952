"""``data`` objects of the frames in docs/protocol.md (snake_case here, camelCase on the wire).

Optional fields get defaults and unknown fields are ignored, so a server that adds fields
does not break an older client.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "Author",
    "ChatAck",
    "ChatMessage",
    "ConnectedInfo",
    "CursorPayload",
    "DocumentState",
    "EditAck",
    "EditPayload",
    "HistoryPage",
    "HistoryQuery",
    "JoinSessionPayload",
    "MessagePayload",
    "MetricUpdate",
    "MetricsPayload",
    "Participant",
    "ParticipantJoined",
    "ParticipantLeft",
    "Payload",
    "Presence",
    "Recovered",
    "Refreshed",
    "RemoteCursor",
    "RemoteEdit",
    "SessionJoined",
    "SessionPayload",
    "SessionRef",
    "Snapshot",
    "TypingInfo",
    "TypingPayload",
    "UserRef",
]


class Payload(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """Base of every ``data`` object."""


# --- payloads: client -> server -------------------------------------------------------


class MessagePayload(Payload, frozen=True):
    content: str
    message_type: str = "text"


class TypingPayload(Payload, frozen=True):
    is_typing: bool


class HistoryQuery(Payload, frozen=True):
    limit: int = 50
    before: str | None = None
    before_seq: int | None = None


class MetricsPayload(Payload, frozen=True):
    metrics: list[str]


class JoinSessionPayload(Payload, frozen=True):
    session_id: str
    role: str = "participant"


class SessionPayload(Payload, frozen=True):
    session_id: str | None = None


class EditPayload(Payload, frozen=True):
    operation: str
    position: int
    version: int
    session_id: str | None = None
    content: str | None = None
    length: int | None = None


class CursorPayload(Payload, frozen=True):
    position: int
    session_id: str | None = None
    selection_end: int | None = None


# --- payloads: server -> client -------------------------------------------------------


class ConnectedInfo(Payload, frozen=True):
    connection_id: str = ""
    user_id: str = ""
    username: str = ""
    context_id: str = ""
    roles: list[str] = []
    server_time: str = ""


class Author(Payload, frozen=True):
    id: str
    name: str = ""


class ChatMessage(Payload, frozen=True):
    id: str
    seq: int
    content: str
    author: Author
    message_type: str = "text"
    timestamp: str = ""


class ChatAck(Payload, frozen=True):
    message_id: str
    seq: int


class TypingInfo(Payload, frozen=True):
    user_id: str
    is_typing: bool
    username: str = ""


class UserRef(Payload, frozen=True):
    user_id: str
    username: str = ""


class Presence(Payload, frozen=True):
    users: list[UserRef] = []


class HistoryPage(Payload, frozen=True):
    messages: list[ChatMessage] = []
    has_more: bool = False


class Recovered(Payload, frozen=True):
    count: int = 0
    truncated: bool = False


class Refreshed(Payload, frozen=True):
    expires_at: str | float | None = None


class MetricUpdate(Payload, frozen=True):
    metric: str
    value: dict[str, Any] = {}
    timestamp: str = ""


class DocumentState(Payload, frozen=True):
    content: str
    version: int


class Participant(Payload, frozen=True):
    user_id: str
    username: str = ""
    role: str = "participant"


class SessionJoined(Payload, frozen=True):
    session_id: str
    document: DocumentState
    participants: list[Participant] = []


class ParticipantJoined(Payload, frozen=True):
    session_id: str
    user_id: str
    username: str = ""
    role: str = "participant"


class ParticipantLeft(Payload, frozen=True):
    session_id: str
    user_id: str
    username: str = ""


class SessionRef(Payload, frozen=True):
    session_id: str


class RemoteEdit(Payload, frozen=True):
    operation: str
    position: int
    version: int
    session_id: str = ""
    content: str | None = None
    length: int | None = None
    author: Author | None = None


class EditAck(Payload, frozen=True):
    version: int
    position: int | None = None


class RemoteCursor(Payload, frozen=True):
    position: int
    session_id: str = ""
    selection_end: int | None = None
    user_id: str = ""
    username: str = ""


class Snapshot(Payload, frozen=True):
    content: str
    version: int
    session_id: str = ""
