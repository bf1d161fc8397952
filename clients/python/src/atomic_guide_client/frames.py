"""Wire frames of docs/protocol.md as msgspec Structs.

Every frame is one JSON object ``{type, id?, timestamp, data, error?}``; ``type`` is the
tag. Client frames (``*Request``) are encoded with :func:`encode`; server frames
(``*Frame``) are decoded with :func:`decode_server_frame`, which ignores unknown fields
and returns an :class:`UnknownFrame` for an unknown ``type`` so that a server newer than
this client does not break it. Payload field names are snake_case in Python and camelCase
on the wire (``rename="camel"``).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .payloads import (
    ChatMessage,
    ConnectedInfo,
    CursorPayload,
    EditPayload,
    HistoryPage,
    HistoryQuery,
    JoinSessionPayload,
    MessagePayload,
    MetricsPayload,
    MetricUpdate,
    ParticipantJoined,
    ParticipantLeft,
    Presence,
    Recovered,
    Refreshed,
    RemoteCursor,
    RemoteEdit,
    SessionJoined,
    SessionPayload,
    SessionRef,
    Snapshot,
    TypingInfo,
    TypingPayload,
    UserRef,
)

__all__ = [
    "FIRE_AND_FORGET",
    "REPLY_TYPES",
    "AckFrame",
    "AuthRequest",
    "ClientFrame",
    "ConnectedFrame",
    "CursorFrame",
    "CursorRequest",
    "EditFrame",
    "EditRequest",
    "ErrorFrame",
    "FrameDecodeError",
    "HistoryFrame",
    "HistoryRequest",
    "JoinSessionRequest",
    "LeaveSessionRequest",
    "MessageFrame",
    "MessageRequest",
    "MetricUpdateFrame",
    "ParticipantJoinedFrame",
    "ParticipantLeftFrame",
    "PingRequest",
    "PongFrame",
    "PresenceFrame",
    "RecoveredFrame",
    "RefreshRequest",
    "RefreshedFrame",
    "ServerFrame",
    "SessionJoinedFrame",
    "SessionLeftFrame",
    "SnapshotFrame",
    "SnapshotRequest",
    "SubscribeRequest",
    "SubscribedFrame",
    "TypingFrame",
    "TypingRequest",
    "UnknownFrame",
    "UnsubscribeRequest",
    "UnsubscribedFrame",
    "UserJoinedFrame",
    "UserLeftFrame",
    "decode_server_frame",
    "encode",
    "frame_type",
]


# --- client frames ----------------------------------------------------------------------


class ClientFrame(
    msgspec.Struct,
    tag_field="type",
    frozen=True,
    kw_only=True,
    rename="camel",
    omit_defaults=True,
):
    """A frame the client sends; ``id`` is filled in by the connection when a reply is due."""

    id: str | None = None


class AuthRequest(ClientFrame, tag="auth", frozen=True):
    token: str
    context_id: str
    last_seq: int | None = None


class RefreshRequest(ClientFrame, tag="refresh", frozen=True):
    token: str


class PingRequest(ClientFrame, tag="ping", frozen=True):
    pass


class MessageRequest(ClientFrame, tag="message", frozen=True):
    data: MessagePayload


class TypingRequest(ClientFrame, tag="typing", frozen=True):
    data: TypingPayload


class HistoryRequest(ClientFrame, tag="history", frozen=True):
    data: HistoryQuery = HistoryQuery()


class SubscribeRequest(ClientFrame, tag="subscribe", frozen=True):
    data: MetricsPayload


class UnsubscribeRequest(ClientFrame, tag="unsubscribe", frozen=True):
    data: MetricsPayload


class JoinSessionRequest(ClientFrame, tag="join_session", frozen=True):
    data: JoinSessionPayload


class LeaveSessionRequest(ClientFrame, tag="leave_session", frozen=True):
    data: SessionPayload = SessionPayload()


class EditRequest(ClientFrame, tag="edit", frozen=True):
    data: EditPayload


class CursorRequest(ClientFrame, tag="cursor", frozen=True):
    data: CursorPayload


class SnapshotRequest(ClientFrame, tag="snapshot", frozen=True):
    data: SessionPayload = SessionPayload()


#: Client frame types that get no reply: never given an ``id``, never queued.
FIRE_AND_FORGET: Final = frozenset({"ping", "typing", "cursor"})

# --- server frames ----------------------------------------------------------------------


class ServerFrame(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, rename="camel"):
    """A frame the server sends. ``id`` is set on direct replies to a client frame."""

    id: str | None = None
    timestamp: str = ""
    error: str | None = None

    @property
    def type(self) -> str:
        return str(self.__struct_config__.tag)


class ConnectedFrame(ServerFrame, tag="connected", frozen=True):
    data: ConnectedInfo = ConnectedInfo()


class ErrorFrame(ServerFrame, tag="error", frozen=True):
    data: dict[str, Any] = {}

    @property
    def code(self) -> str:
        return str(self.data.get("code", "internal"))


class PongFrame(ServerFrame, tag="pong", frozen=True):
    data: dict[str, Any] = {}


class RefreshedFrame(ServerFrame, tag="refreshed", frozen=True):
    data: Refreshed = Refreshed()


class AckFrame(ServerFrame, tag="ack", frozen=True):
    """Acknowledgement; ``data`` is ``{messageId, seq}`` for chat, ``{version, position}``
    for collaboration (see :class:`ChatAck`, :class:`EditAck`)."""

    data: dict[str, Any] = {}


class MessageFrame(ServerFrame, tag="message", frozen=True):
    data: ChatMessage


class TypingFrame(ServerFrame, tag="typing", frozen=True):
    data: TypingInfo


class UserJoinedFrame(ServerFrame, tag="user_joined", frozen=True):
    data: UserRef


class UserLeftFrame(ServerFrame, tag="user_left", frozen=True):
    data: UserRef


class PresenceFrame(ServerFrame, tag="presence", frozen=True):
    data: Presence = Presence()


class HistoryFrame(ServerFrame, tag="history", frozen=True):
    data: HistoryPage = HistoryPage()


class RecoveredFrame(ServerFrame, tag="recovered", frozen=True):
    data: Recovered = Recovered()


class SubscribedFrame(ServerFrame, tag="subscribed", frozen=True):
    data: MetricsPayload


class UnsubscribedFrame(ServerFrame, tag="unsubscribed", frozen=True):
    data: MetricsPayload


class MetricUpdateFrame(ServerFrame, tag="metric_update", frozen=True):
    data: MetricUpdate


class SessionJoinedFrame(ServerFrame, tag="session_joined", frozen=True):
    data: SessionJoined


class SessionLeftFrame(ServerFrame, tag="session_left", frozen=True):
    data: SessionRef


class ParticipantJoinedFrame(ServerFrame, tag="participant_joined", frozen=True):
    data: ParticipantJoined


class ParticipantLeftFrame(ServerFrame, tag="participant_left", frozen=True):
    data: ParticipantLeft


class EditFrame(ServerFrame, tag="edit", frozen=True):
    data: RemoteEdit


class CursorFrame(ServerFrame, tag="cursor", frozen=True):
    data: RemoteCursor


class SnapshotFrame(ServerFrame, tag="snapshot", frozen=True):
    data: Snapshot


class UnknownFrame(msgspec.Struct, frozen=True, kw_only=True):
    """A frame whose ``type`` this client does not know; kept whole for the application."""

    type: str
    id: str | None = None
    timestamp: str = ""
    data: Any = None
    error: str | None = None


_KNOWN_FRAMES: tuple[type[ServerFrame], ...] = (
    ConnectedFrame,
    ErrorFrame,
    PongFrame,
    RefreshedFrame,
    AckFrame,
    MessageFrame,
    TypingFrame,
    UserJoinedFrame,
    UserLeftFrame,
    PresenceFrame,
    HistoryFrame,
    RecoveredFrame,
    SubscribedFrame,
    UnsubscribedFrame,
    MetricUpdateFrame,
    SessionJoinedFrame,
    SessionLeftFrame,
    ParticipantJoinedFrame,
    ParticipantLeftFrame,
    EditFrame,
    CursorFrame,
    SnapshotFrame,
)
_KNOWN_TYPES: Final = frozenset(str(cls.__struct_config__.tag) for cls in _KNOWN_FRAMES)

#: Server frame types that answer one client frame and carry its ``id``.
REPLY_TYPES: Final = frozenset(
    {
        "ack",
        "error",
        "history",
        "snapshot",
        "subscribed",
        "unsubscribed",
        "refreshed",
        "session_joined",
        "session_left",
        "pong",
    }
)


class FrameDecodeError(ValueError):
    """A frame was not JSON, not an object, or a known type with a malformed payload."""


class _Envelope(msgspec.Struct):
    type: str
    id: str | None = None
    timestamp: str = ""
    data: Any = None
    error: str | None = None


def _build_union_decoder() -> msgspec.json.Decoder[Any]:
    union: Any = _KNOWN_FRAMES[0]
    for cls in _KNOWN_FRAMES[1:]:
        union = union | cls
    return msgspec.json.Decoder(type=union)


_union_decoder = _build_union_decoder()
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


def decode_server_frame(raw: bytes | str) -> ServerFrame | UnknownFrame:
    """Decode one server frame; unknown ``type`` -> :class:`UnknownFrame`."""
    try:
        frame: ServerFrame = _union_decoder.decode(raw)
        return frame
    except msgspec.ValidationError as exc:
        try:
            env = _envelope_decoder.decode(raw)
        except msgspec.DecodeError:
            raise FrameDecodeError(str(exc)) from exc
        if env.type in _KNOWN_TYPES:
            raise FrameDecodeError(f"malformed {env.type!r} frame: {exc}") from exc
        return UnknownFrame(
            type=env.type, id=env.id, timestamp=env.timestamp, data=env.data, error=env.error
        )
    except msgspec.DecodeError as exc:
        raise FrameDecodeError(str(exc)) from exc


def encode(frame: ClientFrame) -> str:
    """Encode a client frame as the text of one WebSocket text frame."""
    return _encoder.encode(frame).decode()


def frame_type(frame: ClientFrame | ServerFrame | UnknownFrame) -> str:
    """The wire ``type`` of any frame."""
    if isinstance(frame, UnknownFrame):
        return frame.type
    return str(frame.__struct_config__.tag)
