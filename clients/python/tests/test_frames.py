from __future__ import annotations

import json

import pytest

from atomic_guide_client import UnknownFrame, decode_server_frame, encode
from atomic_guide_client.frames import (
    AckFrame,
    AuthRequest,
    ConnectedFrame,
    EditFrame,
    EditRequest,
    ErrorFrame,
    FrameDecodeError,
    HistoryFrame,
    HistoryRequest,
    MessageFrame,
    MetricUpdateFrame,
    PingRequest,
    RecoveredFrame,
    SessionJoinedFrame,
    TypingRequest,
    frame_type,
)
from atomic_guide_client.payloads import EditPayload, HistoryQuery, TypingPayload

TS = "2026-01-05T09:30:00.123Z"


def decode(obj: object) -> object:
    return decode_server_frame(json.dumps(obj).encode())


def test_a_chat_message_decodes_into_snake_case_fields() -> None:
    frame = decode(
        {
            "type": "message",
            "timestamp": TS,
            "data": {
                "id": "m1",
                "seq": 7,
                "content": "hi",
                "messageType": "markdown",
                "author": {"id": "u1", "name": "Ada"},
                "timestamp": TS,
            },
        }
    )
    assert isinstance(frame, MessageFrame)
    assert frame.type == "message" and frame.timestamp == TS
    assert (frame.data.seq, frame.data.message_type, frame.data.author.name) == (
        7,
        "markdown",
        "Ada",
    )


def test_unknown_fields_are_ignored_at_every_level() -> None:
    frame = decode(
        {
            "type": "connected",
            "timestamp": TS,
            "shard": 3,
            "data": {"connectionId": "c", "userId": "u", "roles": ["learner"], "flags": [1]},
        }
    )
    assert isinstance(frame, ConnectedFrame)
    assert frame.data.user_id == "u" and frame.data.roles == ["learner"]


def test_an_unknown_type_becomes_an_unknown_frame_with_everything_kept() -> None:
    frame = decode({"type": "poll_started", "id": "x", "timestamp": TS, "data": {"q": "?"}})
    assert frame == UnknownFrame(type="poll_started", id="x", timestamp=TS, data={"q": "?"})
    assert frame_type(frame) == "poll_started"


def test_a_known_type_with_a_broken_payload_is_a_decode_error() -> None:
    with pytest.raises(FrameDecodeError):
        decode({"type": "message", "timestamp": TS, "data": {"content": "no seq"}})


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b'{"no":"type"}', b'"text"'])
def test_non_frames_are_decode_errors(raw: bytes) -> None:
    with pytest.raises(FrameDecodeError):
        decode_server_frame(raw)


def test_error_frames_expose_their_code_and_any_extra_data() -> None:
    frame = decode(
        {
            "type": "error",
            "id": "e1",
            "timestamp": TS,
            "error": "stale",
            "data": {"code": "version_mismatch", "version": 12},
        }
    )
    assert isinstance(frame, ErrorFrame)
    assert (frame.code, frame.data["version"], frame.error, frame.id) == (
        "version_mismatch",
        12,
        "stale",
        "e1",
    )


def test_ack_data_stays_a_mapping_because_its_shape_depends_on_the_endpoint() -> None:
    chat = decode({"type": "ack", "id": "a", "timestamp": TS, "data": {"messageId": "m", "seq": 1}})
    edit = decode(
        {"type": "ack", "id": "b", "timestamp": TS, "data": {"version": 4, "position": 0}}
    )
    assert isinstance(chat, AckFrame) and chat.data == {"messageId": "m", "seq": 1}
    assert isinstance(edit, AckFrame) and edit.data["version"] == 4


def test_optional_payload_fields_default() -> None:
    recovered = decode({"type": "recovered", "timestamp": TS, "data": {"count": 2}})
    history = decode({"type": "history", "timestamp": TS, "data": {"messages": []}})
    assert isinstance(recovered, RecoveredFrame) and recovered.data.truncated is False
    assert isinstance(history, HistoryFrame) and history.data.has_more is False


def test_collaboration_frames_decode() -> None:
    joined = decode(
        {
            "type": "session_joined",
            "id": "j",
            "timestamp": TS,
            "data": {
                "sessionId": "s",
                "document": {"content": "a😀", "version": 3},
                "participants": [{"userId": "u", "username": "U", "role": "host"}],
            },
        }
    )
    edit = decode(
        {
            "type": "edit",
            "timestamp": TS,
            "data": {
                "sessionId": "s",
                "operation": "delete",
                "position": 1,
                "length": 2,
                "version": 4,
                "author": {"id": "u2", "name": "B"},
            },
        }
    )
    assert isinstance(joined, SessionJoinedFrame) and joined.data.document.content == "a😀"
    assert isinstance(edit, EditFrame) and (edit.data.length, edit.data.content) == (2, None)


def test_metric_values_keep_their_wire_keys() -> None:
    frame = decode(
        {
            "type": "metric_update",
            "timestamp": TS,
            "data": {"metric": "engagement", "value": {"onlineUsers": 3}, "timestamp": TS},
        }
    )
    assert isinstance(frame, MetricUpdateFrame) and frame.data.value == {"onlineUsers": 3}


def test_client_frames_encode_with_camel_case_and_without_empty_optionals() -> None:
    assert json.loads(encode(PingRequest())) == {"type": "ping"}
    assert json.loads(encode(AuthRequest(token="t", context_id="c", last_seq=9))) == {
        "type": "auth",
        "token": "t",
        "contextId": "c",
        "lastSeq": 9,
    }
    assert json.loads(encode(TypingRequest(data=TypingPayload(is_typing=True)))) == {
        "type": "typing",
        "data": {"isTyping": True},
    }
    history = HistoryRequest(id="h", data=HistoryQuery(limit=10, before_seq=5))
    assert json.loads(encode(history)) == {
        "type": "history",
        "id": "h",
        "data": {"limit": 10, "beforeSeq": 5},
    }


def test_an_insert_edit_carries_content_and_a_delete_carries_length() -> None:
    insert = EditPayload(session_id="s", operation="insert", position=0, version=2, content="x")
    delete = EditPayload(operation="delete", position=1, version=2, length=3)
    assert json.loads(encode(EditRequest(data=insert)))["data"] == {
        "sessionId": "s",
        "operation": "insert",
        "position": 0,
        "version": 2,
        "content": "x",
    }
    assert json.loads(encode(EditRequest(data=delete)))["data"] == {
        "operation": "delete",
        "position": 1,
        "version": 2,
        "length": 3,
    }
