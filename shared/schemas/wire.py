"""WebSocket frames (docs/protocol.md): client data schemas, the decoder, and server frame encoding.

Decoding is two-step: the envelope first (so ``unknown_type`` and the correlation ``id`` are known
even when the data is bad), then the data of that type. msgspec never coerces (``"5"`` is not an
int, ``1`` is not a bool), which is what the protocol asks for.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from shared.errors import InvalidJson, InvalidMessage, UnknownType, protocol
from shared.schemas.events import ChatMessagePosted
from shared.schemas.frames import ErrorData, message_data
from shared.timefmt import ms_to_ts

__all__ = [
    "ENDPOINT_TYPES",
    "ClientFrame",
    "decode_client_frame",
    "encode_frame",
    "error_frame",
    "is_json",
    "message_frame",
    "message_wire",
]

ClientId = Annotated[str, Meta(min_length=1, max_length=64)]
SessionId = Annotated[str, Meta(min_length=1, max_length=128)]
NonNegative = Annotated[int, Meta(ge=0)]
MetricName = Literal["engagement", "performance", "activity"]


class Envelope(Struct):
    type: str
    id: ClientId | None = None
    data: Raw = Raw(b"{}")
    # auth/refresh put these at the top level, as the reference page shows
    token: str | None = None
    contextId: str | None = None
    lastSeq: NonNegative | None = None


class AuthData(Struct):
    token: str | None = None
    contextId: str | None = None
    lastSeq: NonNegative | None = None


class RefreshData(Struct):
    token: str | None = None


class Empty(Struct):
    pass


class ChatMessageIn(Struct):
    content: Annotated[str, Meta(min_length=1, max_length=4000)]
    messageType: Literal["text", "markdown"] = "text"


class TypingIn(Struct):
    isTyping: bool


class HistoryIn(Struct):
    limit: Annotated[int, Meta(ge=1, le=100)] = 50
    before: str | None = None
    beforeSeq: NonNegative | None = None


class MetricsIn(Struct):
    metrics: Annotated[list[MetricName], Meta(min_length=1, max_length=3)]


class JoinSessionIn(Struct):
    sessionId: SessionId
    role: Literal["participant", "observer", "host"] = "participant"


class SessionRefIn(Struct):
    sessionId: SessionId | None = None


class EditIn(Struct):
    operation: Literal["insert", "delete"]
    position: NonNegative
    version: NonNegative
    sessionId: SessionId | None = None
    content: str | None = None
    length: Annotated[int, Meta(ge=1)] | None = None


class CursorIn(Struct):
    position: NonNegative
    sessionId: SessionId | None = None
    selectionEnd: NonNegative | None = None


_COMMON: dict[str, type[Struct]] = {"auth": AuthData, "refresh": RefreshData, "ping": Empty}
ENDPOINT_TYPES: dict[str, dict[str, type[Struct]]] = {
    "chat": {**_COMMON, "message": ChatMessageIn, "typing": TypingIn, "history": HistoryIn},
    "analytics": {**_COMMON, "subscribe": MetricsIn, "unsubscribe": MetricsIn},
    "collaboration": {
        **_COMMON,
        "join_session": JoinSessionIn,
        "leave_session": SessionRefIn,
        "edit": EditIn,
        "cursor": CursorIn,
        "snapshot": SessionRefIn,
    },
}
_ENVELOPE = msgspec.json.Decoder(Envelope)
_DATA = {
    endpoint: {name: msgspec.json.Decoder(t) for name, t in types.items()}
    for endpoint, types in ENDPOINT_TYPES.items()
}


class ClientFrame(Struct, frozen=True):
    type: str
    id: str | None
    data: Any
    envelope: Envelope


def json_syntax(raw: bytes | str) -> Literal["ok", "bad", "deep"]:
    """Whether ``raw`` is JSON by the standard's grammar, checked with the stdlib (which, unlike
    msgspec, reads lone surrogate escapes: the protocol calls those invalid_message, not
    invalid_json). "deep": nested past what any decoder here follows (invalid_message)."""

    def _refuse(_: str) -> None:
        raise ValueError("NaN/Infinity are not JSON")

    try:
        json.loads(raw, parse_constant=_refuse)
    except RecursionError:
        return "deep"
    except ValueError:
        return "bad"
    return "ok"


def is_json(raw: bytes | str) -> bool:
    """False only for text that is not JSON at all (too deep still counts as JSON)."""
    return json_syntax(raw) != "bad"


_TOO_DEEP = "frame is nested too deeply"


def decode_client_frame(endpoint: str, raw: bytes | str) -> ClientFrame:
    """Decode one client text frame for ``endpoint`` or raise a ``Refusal``.

    The error carries the client ``id`` in ``data['id']`` when the envelope had a usable one.
    """
    try:
        env = _ENVELOPE.decode(raw)
    except RecursionError:
        raise InvalidMessage(_TOO_DEEP) from None
    except msgspec.ValidationError as exc:
        # msgspec may refuse the object before it reaches trailing garbage ('{} junk')
        if not is_json(raw):
            raise InvalidJson("frame is not valid JSON") from None
        raise InvalidMessage(f"bad envelope: {exc}") from None
    except msgspec.DecodeError:
        syntax = json_syntax(raw)
        if syntax == "deep":
            raise InvalidMessage(_TOO_DEEP) from None
        if syntax == "ok":
            raise InvalidMessage("strings must not hold lone surrogates") from None
        raise InvalidJson("frame is not valid JSON") from None
    decoder = _DATA[endpoint].get(env.type)
    if decoder is None:
        raise UnknownType(f"unknown message type {env.type!r} on this endpoint")
    try:
        data = decoder.decode(env.data)
    except RecursionError:
        raise InvalidMessage(_TOO_DEEP) from None
    except msgspec.ValidationError as exc:
        raise InvalidMessage(f"bad data for {env.type!r}: {exc}") from None
    except msgspec.DecodeError:  # only lone surrogates reach here: the envelope parsed
        raise InvalidMessage("strings must not hold lone surrogates") from None
    if isinstance(data, AuthData):
        data = AuthData(
            token=env.token if env.token is not None else data.token,
            contextId=env.contextId if env.contextId is not None else data.contextId,
            lastSeq=env.lastSeq if env.lastSeq is not None else data.lastSeq,
        )
    elif isinstance(data, RefreshData) and env.token is not None:
        data = RefreshData(token=env.token)
    return ClientFrame(type=env.type, id=env.id, data=data, envelope=env)


class _IdOnly(Struct):
    id: Any = None


_ID_DECODER = msgspec.json.Decoder(_IdOnly)


def peek_id(raw: bytes | str) -> str | None:
    """Best-effort client id of a frame that failed to decode, for correlating the error."""
    try:
        cid = _ID_DECODER.decode(raw).id
    except RecursionError:
        return None
    except msgspec.DecodeError:  # lone surrogates elsewhere in the frame: the stdlib reads them
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        cid = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(cid, str) and 1 <= len(cid) <= 64 and _encodable(cid):
        return cid
    return None


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates: they cannot be echoed back as JSON text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- server frames -----------------------------------------------------------------------------
class ServerFrame(Struct, omit_defaults=True):
    type: str
    timestamp: str
    data: Any  # always present, `{}` when empty
    id: str | None = None
    error: str | None = None


_ENCODER = msgspec.json.Encoder()


def encode_frame(
    type: str, timestamp: str, data: Any = None, *, id: str | None = None, error: str | None = None
) -> bytes:
    return _ENCODER.encode(
        ServerFrame(
            type=type, timestamp=timestamp, data={} if data is None else data, id=id, error=error
        )
    )


def error_frame(exc: BaseException, timestamp: str, id: str | None = None) -> bytes:
    """The error frame for ``exc`` (``shared.errors.protocol`` names it); never fails on what a
    client sent (an id or text that cannot be encoded is left out), so no client input turns
    into ``internal``."""
    err = protocol(exc)
    data = ErrorData(code=err.code, **err.data)
    try:
        return encode_frame("error", timestamp, data, id=id, error=err.message)
    except UnicodeEncodeError:
        message = err.message.encode("utf-8", "replace").decode("utf-8")
        return encode_frame("error", timestamp, ErrorData(code=err.code), error=message)


def encode(obj: Any) -> bytes:
    return _ENCODER.encode(obj)


def message_wire(ev: ChatMessagePosted) -> dict[str, Any]:
    """The ``message`` frame data for a stored chat message event, as plain JSON values."""
    out: dict[str, Any] = msgspec.to_builtins(message_data(ev))
    return out


def message_frame(ev: ChatMessagePosted) -> bytes:
    """The ``message`` frame of a stored chat message event, as the chat service broadcasts it
    and a gateway rebuilds it from the log (the same bytes either way)."""
    return encode_frame("message", ms_to_ts(ev.ts), message_data(ev))
