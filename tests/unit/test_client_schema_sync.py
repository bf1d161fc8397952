"""The Python client SDK's typed frames stay in step with the server's wire schemas.

The server's client-frame schemas are ``shared.schemas.wire.ENDPOINT_TYPES``; the SDK has
its own Structs (``atomic_guide_client.frames`` / ``.payloads``) because it must not depend
on server code. These tests compare the two field by field on the wire (camelCase names,
JSON types, required-ness, defaults), send every client request through the server's real
decoder, and check what the server emits against the SDK's server-frame types. A failure
prints one line per difference.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from typing import Any

import atomic_guide_client.frames as cf
import msgspec
import pytest
from atomic_guide_client import METRICS
from atomic_guide_client.chat import MAX_HISTORY_PAGE
from atomic_guide_client.payloads import (
    ChatMessage,
    CursorPayload,
    EditPayload,
    HistoryQuery,
    JoinSessionPayload,
    MessagePayload,
    MetricsPayload,
    MetricUpdate,
    SessionPayload,
    TypingPayload,
)
from msgspec import inspect as mi

from services.chat.room import message_wire
from shared.errors import AGError
from shared.schemas import wire
from shared.schemas.analytics import metric_update_data
from shared.schemas.events import ChatMessagePosted
from tests.helpers import unmodelled_fields

#: Client frames whose fields travel at the top level of the envelope, not in ``data``
#: (docs/protocol.md, "Authentication": the reference page's form).
TOP_LEVEL = frozenset({"auth", "refresh"})
ENVELOPE_FIELDS = frozenset({"type", "id", "data"})


# --- normalised shapes -----------------------------------------------------------------------
def json_type(info: mi.Type) -> str:
    """A msgspec type as its JSON type, without validation constraints or enum values.

    Constraints (``min_length``, ``ge``...) and ``Literal`` values are the server's validation;
    the sample round trip below checks that the client's values pass it.
    """
    match info:
        case mi.StrType():
            return "string"
        case mi.BoolType():
            return "boolean"
        case mi.IntType():
            return "integer"
        case mi.FloatType():
            return "number"
        case mi.NoneType():
            return "null"
        case mi.AnyType() | mi.RawType():
            return "any"
        case mi.LiteralType():
            kinds = {"string" if isinstance(v, str) else "integer" for v in info.values}
            return "|".join(sorted(kinds))
        case mi.ListType():
            return f"array<{json_type(info.item_type)}>"
        case mi.DictType():
            return f"object<{json_type(info.key_type)},{json_type(info.value_type)}>"
        case mi.StructType():
            inner = ", ".join(f"{k}: {v}" for k, v in sorted(struct_shape(info).items()))
            return "{" + inner + "}"
        case mi.UnionType():
            return "|".join(sorted({part for t in info.types for part in json_type(t).split("|")}))
    raise TypeError(f"no JSON shape for {info!r}")


def struct_fields(type_: Any) -> dict[str, mi.Field]:
    info = mi.type_info(type_)
    assert isinstance(info, mi.StructType), type_
    return {f.encode_name: f for f in info.fields}


def field_shape(field: mi.Field) -> str:
    default = "" if field.required else f" = {field_default(field)!r}"
    return f"{'required' if field.required else 'optional'} {json_type(field.type)}{default}"


def field_default(field: mi.Field) -> Any:
    if isinstance(field.default, msgspec.Raw):
        return msgspec.json.decode(field.default)
    if field.default is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default_factory())
    return None


def struct_shape(info: mi.StructType) -> dict[str, str]:
    return {f.encode_name: field_shape(f) for f in info.fields}


def shape(type_: Any, *, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """``{wire name: "required|optional <json type> [= default]"}`` of a Struct's fields."""
    return {name: field_shape(f) for name, f in struct_fields(type_).items() if name not in exclude}


def loosen(shapes: dict[str, str]) -> dict[str, str]:
    """For top-level auth fields: the server declares them all optional (either place works)
    and checks presence itself, so only the name and the non-null JSON type are compared."""
    out = {}
    for name, s in shapes.items():
        kind = s.split(" ")[1]
        out[name] = "|".join(p for p in kind.split("|") if p != "null")
    return out


def diff(what: str, client: dict[str, str], server: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(client.keys() | server.keys()):
        c, s = client.get(name, "<missing>"), server.get(name, "<missing>")
        if c != s:
            lines.append(f"{what}.{name}: client {c} != server {s}")
    return lines


def fail_on(problems: list[str], title: str) -> None:
    if problems:
        pytest.fail(f"{title} ({len(problems)}):\n  " + "\n  ".join(problems), pytrace=False)


# --- the two sides ---------------------------------------------------------------------------
def client_request_types() -> dict[str, type[cf.ClientFrame]]:
    """Every client frame class of the SDK, by wire ``type``."""
    found: dict[str, type[cf.ClientFrame]] = {}
    for obj in vars(cf).values():
        if isinstance(obj, type) and issubclass(obj, cf.ClientFrame) and obj is not cf.ClientFrame:
            tag = obj.__struct_config__.tag
            assert isinstance(tag, str) and tag not in found, obj
            found[tag] = obj
    return found


def server_accepted() -> Iterator[tuple[str, str, type[msgspec.Struct]]]:
    """``(endpoint, type, data Struct)`` for every client frame the server decodes."""
    for endpoint, types in wire.ENDPOINT_TYPES.items():
        for name, data_type in types.items():
            yield endpoint, name, data_type


def data_type_of(request: type[cf.ClientFrame]) -> Any:
    """The type of a request's ``data`` field (a Payload Struct)."""
    hints = typing.get_type_hints(request)
    return hints["data"]


def test_every_type_the_server_accepts_has_a_client_request_type() -> None:
    client = client_request_types()
    missing = [
        f"{endpoint}: {name!r} has no ClientFrame subclass in atomic_guide_client.frames"
        for endpoint, name, _ in server_accepted()
        if name not in client
    ]
    fail_on(missing, "client frame types the SDK cannot send")


def test_every_client_request_type_is_accepted_by_some_endpoint() -> None:
    accepted = {name for _, name, _ in server_accepted()}
    extra = [
        f"{name!r} ({cls.__name__}) is accepted by no endpoint"
        for name, cls in client_request_types().items()
        if name not in accepted
    ]
    fail_on(extra, "client frame types the server does not know")


def test_client_and_server_data_fields_match_in_name_type_requiredness_and_default() -> None:
    client = client_request_types()
    problems: list[str] = []
    for endpoint, name, server_data in server_accepted():
        request = client.get(name)
        if request is None:
            continue  # reported by the test above
        where = f"{endpoint}/{name}"
        if name in TOP_LEVEL:
            server_shape = loosen(shape(server_data))
            client_shape = loosen(shape(request, exclude=ENVELOPE_FIELDS))
            problems += diff(f"{where} (top level)", client_shape, server_shape)
            envelope = shape(wire.Envelope, exclude=ENVELOPE_FIELDS)
            problems += [
                f"{where}: client sends {f!r} at the top level; the server envelope lacks it"
                for f in client_shape
                if f not in envelope
            ]
            continue
        top = shape(request, exclude=ENVELOPE_FIELDS)
        if name == "ping":  # nothing but the envelope
            problems += [f"{where}: unexpected top-level field {f!r}" for f in top]
            continue
        if top:
            problems.append(f"{where}: unexpected top-level fields {sorted(top)}")
        problems += diff(where, shape(data_type_of(request)), shape(server_data))
        # The server defaults an absent ``data`` to {}: the client may leave it out exactly
        # when the server's data has no required field.
        data_field = struct_fields(request)["data"]
        server_needs_data = any(f.required for f in struct_fields(server_data).values())
        if data_field.required != server_needs_data:
            problems.append(
                f"{where}: client data is {'required' if data_field.required else 'optional'}, "
                f"server data has {'some' if server_needs_data else 'no'} required field"
            )
    fail_on(problems, "client/server schema differences")


def test_the_envelope_id_matches() -> None:
    client = shape(cf.ClientFrame)["id"]
    server = shape(wire.Envelope)["id"]
    assert client == server == "optional null|string = None"
    # and the ids the SDK makes fit the server's ClientId (1-64 chars)
    id_info = struct_fields(wire.Envelope)["id"].type
    assert isinstance(id_info, mi.UnionType)
    str_info = next(t for t in id_info.types if isinstance(t, mi.StrType))
    from atomic_guide_client._outbox import new_request_id, valid_request_id

    assert str_info.min_length == 1 and str_info.max_length == 64
    assert valid_request_id("x" * 64) and not valid_request_id("x" * 65)
    assert not valid_request_id("")
    assert 1 <= len(new_request_id()) <= 64


# --- the server's decoder accepts what the client encodes ------------------------------------
EMOJI = "héllo 👋🏽 wörld 😀"

#: Sample requests: every field set, and every field left at its default.
SAMPLES: list[cf.ClientFrame] = [
    cf.AuthRequest(token="a.b.c", context_id="course-1", last_seq=7),
    cf.AuthRequest(token="a.b.c", context_id="course-1"),
    cf.RefreshRequest(token="a.b.c"),
    cf.PingRequest(),
    cf.PingRequest(id="p1"),
    cf.MessageRequest(id="m1", data=MessagePayload(content=EMOJI, message_type="markdown")),
    cf.MessageRequest(data=MessagePayload(content="x" * 4000)),
    cf.TypingRequest(data=TypingPayload(is_typing=True)),
    cf.TypingRequest(data=TypingPayload(is_typing=False)),
    cf.HistoryRequest(id="h1", data=HistoryQuery(limit=MAX_HISTORY_PAGE, before_seq=0)),
    cf.HistoryRequest(data=HistoryQuery(limit=1, before="2026-01-05T09:30:00.123Z")),
    cf.HistoryRequest(),
    cf.SubscribeRequest(id="s1", data=MetricsPayload(metrics=list(METRICS))),
    cf.UnsubscribeRequest(data=MetricsPayload(metrics=["activity"])),
    cf.JoinSessionRequest(data=JoinSessionPayload(session_id="s-1", role="host")),
    cf.JoinSessionRequest(data=JoinSessionPayload(session_id="s-1")),
    cf.LeaveSessionRequest(data=SessionPayload(session_id="s-1")),
    cf.LeaveSessionRequest(),
    cf.EditRequest(
        id="e1",
        data=EditPayload(
            session_id="s-1", operation="insert", position=3, version=0, content=EMOJI
        ),
    ),
    cf.EditRequest(
        data=EditPayload(operation="delete", position=0, version=12, length=2, content="👋")
    ),
    cf.EditRequest(data=EditPayload(operation="delete", position=0, version=1, length=1)),
    cf.CursorRequest(data=CursorPayload(session_id="s-1", position=4, selection_end=9)),
    cf.CursorRequest(data=CursorPayload(position=0)),
    cf.SnapshotRequest(data=SessionPayload(session_id="s-1")),
    cf.SnapshotRequest(),
]


def endpoints_for(kind: str) -> list[str]:
    return [e for e, types in wire.ENDPOINT_TYPES.items() if kind in types]


def test_the_samples_cover_every_client_request_type() -> None:
    covered = {cf.frame_type(s) for s in SAMPLES}
    assert covered == set(client_request_types()), set(client_request_types()) ^ covered


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: cf.encode(f)[:60])
def test_the_server_decodes_every_client_request_to_the_same_values(
    frame: cf.ClientFrame,
) -> None:
    text = cf.encode(frame)
    sent = json.loads(text)
    kind = cf.frame_type(frame)
    endpoints = endpoints_for(kind)
    assert endpoints, f"{kind!r} is accepted by no endpoint"
    for endpoint in endpoints:
        try:
            decoded = wire.decode_client_frame(endpoint, text)
        except AGError as exc:
            pytest.fail(f"{endpoint} refused {text}: {exc.code} {exc.message}", pytrace=False)
        assert decoded.type == kind and decoded.id == sent.get("id")
        got = msgspec.to_builtins(decoded.data)
        assert isinstance(got, dict)
        wanted = {k: v for k, v in sent.items() if k not in ENVELOPE_FIELDS}
        wanted.update(sent.get("data", {}))
        # every value the client sent arrived unchanged; everything else is the server default
        for name, value in wanted.items():
            assert got.get(name) == value, f"{endpoint}/{kind}.{name}: sent {value!r}, got {got}"
        server_fields = struct_fields(type(decoded.data))
        for name, value in got.items():
            if name not in wanted:
                assert value == field_default(server_fields[name]), (endpoint, kind, name)


def test_sdk_constants_match_the_server_limits() -> None:
    metrics = struct_fields(wire.MetricsIn)["metrics"].type
    assert isinstance(metrics, mi.ListType) and isinstance(metrics.item_type, mi.LiteralType)
    assert set(METRICS) == set(metrics.item_type.values)
    limit = struct_fields(wire.HistoryIn)["limit"].type
    assert isinstance(limit, mi.IntType)
    assert (limit.ge, limit.le) == (1, MAX_HISTORY_PAGE)
    assert cf.FIRE_AND_FORGET <= {name for _, name, _ in server_accepted()}


# --- server -> client ------------------------------------------------------------------------
def test_the_chat_services_message_data_decodes_with_every_field_modelled() -> None:
    event = ChatMessagePosted(
        contextId="c",
        ts=1_767_605_400_123,
        messageId="m-1",
        seq=42,
        userId="alice",
        userName="Alice 👩‍🎓",
        content=EMOJI,
        messageType="markdown",
        clientId="c-1",
    )
    data = message_wire(event)
    assert unmodelled_fields(data, ChatMessage) == []
    message = msgspec.convert(data, ChatMessage)
    assert (message.id, message.seq, message.content) == ("m-1", 42, EMOJI)
    assert (message.author.id, message.author.name) == ("alice", "Alice 👩‍🎓")
    assert message.message_type == "markdown" and message.timestamp == "2026-01-05T09:30:00.123Z"
    frame = cf.decode_server_frame(wire.encode_frame("message", message.timestamp, data))
    assert isinstance(frame, cf.MessageFrame) and frame.data == message


def test_the_aggregators_metric_update_data_decodes_with_every_field_modelled() -> None:
    data = metric_update_data("activity", {"messages": 2, "perMinute": []}, "t")
    assert unmodelled_fields(data, MetricUpdate) == []
    update = msgspec.convert(data, MetricUpdate)
    assert (update.metric, update.value["messages"], update.timestamp) == ("activity", 2, "t")


def test_server_error_frames_decode_with_code_and_correlation_id() -> None:
    raw = wire.error_frame(AGError("version_mismatch", "stale", data={"version": 9}), "t", "e1")
    frame = cf.decode_server_frame(raw)
    assert isinstance(frame, cf.ErrorFrame)
    assert (frame.code, frame.id, frame.error, frame.data["version"]) == (
        "version_mismatch",
        "e1",
        "stale",
        9,
    )


def test_the_diff_names_the_field_and_both_sides() -> None:
    class Client(msgspec.Struct, rename="camel"):
        session_id: str
        limit: int = 20

    class Server(msgspec.Struct):
        sessionId: str | None = None
        limit: int = 50
        extra: bool = False

    lines = diff("x", shape(Client), shape(Server))
    assert lines == [
        "x.extra: client <missing> != server optional boolean = False",
        "x.limit: client optional integer = 20 != server optional integer = 50",
        "x.sessionId: client required string != server optional null|string = None",
    ]


def test_every_server_frame_struct_is_modelled_by_the_sdk() -> None:
    """The server's frame Structs (the schema source) against the SDK's frame data types:
    every field the server can send is declared, with a compatible JSON type."""
    from shared.schemas.frames import SERVER_FRAMES

    sdk = {str(cls.__struct_config__.tag): cls for cls in cf._KNOWN_FRAMES}
    problems: list[str] = []
    for endpoint, frames in SERVER_FRAMES.items():
        for kind, server_data in frames.items():
            frame_cls = sdk.get(kind)
            if frame_cls is None:
                problems.append(f"{endpoint}/{kind}: no frame type in the SDK")
                continue
            client_data = typing.get_type_hints(frame_cls)["data"]
            if client_data in (dict[str, Any], Any):  # an open dict takes anything
                continue
            client = shape(client_data)
            for name, server_field in shape(server_data).items():
                if name not in client:
                    problems.append(f"{endpoint}/{kind}.{name}: the SDK drops it")
                    continue
                s_kind = server_field.split(" ")[1].split("|")
                c_kind = client[name].split(" ")[1].split("|")
                if not set(s_kind) - {"null"} <= set(c_kind) | {"any"}:
                    problems.append(f"{endpoint}/{kind}.{name}: server {s_kind}, SDK {c_kind}")
                if server_field.startswith("optional") and client[name].startswith("required"):
                    problems.append(f"{endpoint}/{kind}.{name}: may be absent; SDK requires it")
    fail_on(problems, "server frames the SDK does not model")
