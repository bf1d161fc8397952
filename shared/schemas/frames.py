"""Every frame the server sends, as typed ``data`` Structs: the one schema source.

The server builds its frames from these (encoded once by msgspec); ``SERVER_FRAMES`` says which
endpoint sends which; the JSON Schemas and the AsyncAPI document (``docs/asyncapi.yaml``,
``ops/asyncapi.py``) are generated from them, and the Python SDK's frame types are checked
against them (``tests/unit/test_client_schema_sync.py``). Field names are the wire's (camelCase).
Fields that default to ``None`` are left out of the frame when unset.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from shared.schemas.events import ChatMessagePosted
from shared.timefmt import ms_to_ts

__all__ = [
    "SERVER_FRAMES",
    "Author",
    "ChatAckData",
    "ConnectedData",
    "CursorData",
    "DocumentData",
    "EditAckData",
    "EditData",
    "Empty",
    "ErrorData",
    "HistoryData",
    "MessageData",
    "MetricUpdateData",
    "MetricsData",
    "ParticipantData",
    "ParticipantJoinedData",
    "ParticipantLeftData",
    "PresenceData",
    "RecoveredData",
    "RefreshedData",
    "SessionJoinedData",
    "SessionRefData",
    "SnapshotData",
    "TypingData",
    "UserData",
    "message_data",
]


class _Data(Struct, frozen=True, omit_defaults=True):
    """Base of every frame's ``data``."""


class Empty(_Data, frozen=True):
    """``data`` of a frame that says nothing more (``pong``)."""


class ConnectedData(_Data, frozen=True):
    connectionId: str
    userId: str
    username: str
    contextId: str
    roles: list[str]
    serverTime: str  # ISO 8601 UTC, milliseconds, Z


class ErrorData(_Data, frozen=True):
    """An error's ``data``: its protocol ``code``, and what some errors add."""

    code: str
    version: int | None = None  # version_mismatch: the document's current version
    limit: int | None = None  # too_large: the limit in bytes


class RefreshedData(_Data, frozen=True):
    expiresAt: str


class UserData(_Data, frozen=True):
    userId: str
    username: str


class PresenceData(_Data, frozen=True):
    users: list[UserData]


class Author(_Data, frozen=True):
    id: str
    name: str


class MessageData(_Data, frozen=True):
    id: str
    seq: int
    content: str
    messageType: str
    author: Author
    timestamp: str


class ChatAckData(_Data, frozen=True):
    messageId: str
    seq: int


class TypingData(_Data, frozen=True):
    userId: str
    username: str
    isTyping: bool


class HistoryData(_Data, frozen=True):
    messages: list[MessageData]
    hasMore: bool


class RecoveredData(Struct, frozen=True, omit_defaults=True):
    count: int
    truncated: bool = False


class MetricsData(_Data, frozen=True):
    metrics: list[Literal["engagement", "performance", "activity"]]


class MetricUpdateData(_Data, frozen=True):
    metric: str
    value: dict[str, Any]
    timestamp: str


class DocumentData(_Data, frozen=True):
    content: str
    version: int


class ParticipantData(_Data, frozen=True):
    userId: str
    username: str
    role: str


class SessionJoinedData(_Data, frozen=True):
    sessionId: str
    document: DocumentData
    participants: list[ParticipantData]


class SessionRefData(_Data, frozen=True):
    sessionId: str


class ParticipantJoinedData(_Data, frozen=True):
    sessionId: str
    userId: str
    username: str
    role: str


class ParticipantLeftData(_Data, frozen=True):
    sessionId: str
    userId: str
    username: str


class EditData(_Data, frozen=True):
    """A remote edit: a delete carries its ``length`` but not the removed text."""

    sessionId: str
    operation: Literal["insert", "delete"]
    position: int
    length: int
    version: int
    author: Author
    content: str | None = None


class EditAckData(_Data, frozen=True):
    version: int
    position: int


class CursorData(_Data, frozen=True):
    sessionId: str
    position: int
    userId: str
    selectionEnd: int | None = None


class SnapshotData(_Data, frozen=True):
    sessionId: str
    content: str
    version: int


_COMMON: dict[str, type[Struct]] = {
    "connected": ConnectedData,
    "error": ErrorData,
    "pong": Empty,
    "refreshed": RefreshedData,
}
#: endpoint -> server frame type -> its ``data`` Struct
SERVER_FRAMES: dict[str, dict[str, type[Struct]]] = {
    "chat": {
        **_COMMON,
        "presence": PresenceData,
        "message": MessageData,
        "ack": ChatAckData,
        "typing": TypingData,
        "user_joined": UserData,
        "user_left": UserData,
        "history": HistoryData,
        "recovered": RecoveredData,
    },
    "analytics": {
        **_COMMON,
        "subscribed": MetricsData,
        "unsubscribed": MetricsData,
        "metric_update": MetricUpdateData,
    },
    "collaboration": {
        **_COMMON,
        "session_joined": SessionJoinedData,
        "session_left": SessionRefData,
        "participant_joined": ParticipantJoinedData,
        "participant_left": ParticipantLeftData,
        "edit": EditData,
        "ack": EditAckData,
        "cursor": CursorData,
        "snapshot": SnapshotData,
    },
}


def message_data(ev: ChatMessagePosted) -> MessageData:
    """The ``message`` frame data of a stored chat message event (fields copied here only)."""
    return MessageData(
        id=ev.messageId,
        seq=ev.seq,
        content=ev.content,
        messageType=ev.messageType,
        author=Author(ev.userId, ev.userName),
        timestamp=ms_to_ts(ev.ts),
    )
