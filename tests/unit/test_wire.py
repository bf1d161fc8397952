from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import AGError
from shared.schemas.wire import (
    AuthData,
    ChatMessageIn,
    decode_client_frame,
    encode_frame,
    peek_id,
)
from shared.subjects import token, untoken


def code(endpoint: str, raw: str | bytes) -> str:
    with pytest.raises(AGError) as info:
        decode_client_frame(endpoint, raw)
    return info.value.code


def test_valid_message_decodes_with_defaults() -> None:
    f = decode_client_frame("chat", '{"type":"message","id":"a","data":{"content":"hi"}}')
    assert f.id == "a" and f.data == ChatMessageIn(content="hi", messageType="text")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{", "invalid_json"),
        ("", "invalid_json"),
        ("NaN", "invalid_json"),
        ('{"type":"message","data":{"content":NaN}}', "invalid_json"),
        ("[]", "invalid_message"),
        ('"message"', "invalid_message"),
        ('{"data":{}}', "invalid_message"),
        ('{"type":5}', "invalid_message"),
        ('{"type":"message","id":5,"data":{"content":"x"}}', "invalid_message"),
        ('{"type":"message","id":"' + "x" * 65 + '","data":{"content":"x"}}', "invalid_message"),
        ('{"type":"message","data":{"content":"' + "x" * 4001 + '"}}', "invalid_message"),
        ('{"type":"typing","data":{"isTyping":"true"}}', "invalid_message"),
        ('{"type":"history","data":{"limit":0}}', "invalid_message"),
        ('{"type":"history","data":{"beforeSeq":-1}}', "invalid_message"),
        ('{"type":"history","data":{"limit":5.0}}', "invalid_message"),
        ('{"type":"message","data":{"content":"\\udc00"}}', "invalid_message"),
        ('{"type":"\\ud800"}', "invalid_message"),
        ("{} trailing", "invalid_json"),  # refused as an object before the garbage is seen
        ('{"id":5} ]', "invalid_json"),
        ('{"type":"edit","data":{}}', "unknown_type"),
        ('{"type":"connected"}', "unknown_type"),
    ],
)
def test_chat_frames_are_refused_with_the_protocol_code(raw: str, expected: str) -> None:
    assert code("chat", raw) == expected


def test_valid_surrogate_pairs_are_fine() -> None:
    f = decode_client_frame("chat", '{"type":"message","data":{"content":"\\ud83d\\ude00"}}')
    assert f.data.content == "😀"


def test_auth_fields_at_top_level_or_in_data() -> None:
    top = decode_client_frame("chat", '{"type":"auth","token":"t","contextId":"c","lastSeq":4}')
    inside = decode_client_frame("chat", '{"type":"auth","data":{"token":"t","contextId":"c"}}')
    assert top.data == AuthData("t", "c", 4) and inside.data == AuthData("t", "c", None)


def test_metrics_subscribe_requires_known_metrics() -> None:
    assert code("analytics", '{"type":"subscribe","data":{"metrics":[]}}') == "invalid_message"
    assert code("analytics", '{"type":"subscribe","data":{"metrics":["x"]}}') == "invalid_message"
    ok = decode_client_frame("analytics", '{"type":"subscribe","data":{"metrics":["activity"]}}')
    assert ok.data.metrics == ["activity"]


def test_server_frames_always_carry_data_and_omit_absent_id() -> None:
    assert encode_frame("pong", "2026-01-05T09:30:00.123Z") == (
        b'{"type":"pong","timestamp":"2026-01-05T09:30:00.123Z","data":{}}'
    )
    assert b'"id":"x"' in encode_frame("ack", "t", {"seq": 1}, id="x")


def test_peek_id_recovers_the_correlation_id_of_a_bad_frame() -> None:
    assert peek_id('{"id":"abc","type":1}') == "abc"
    assert peek_id("{bad") is None and peek_id('{"id":7}') is None


@pytest.mark.parametrize("value", ["course-1", "a.b", "with space", "ünï", "*", ">", "~x"])
def test_subject_tokens_are_safe_and_reversible(value: str) -> None:
    tok = token(value)
    assert not set(tok) & set(". *>\t") and untoken(tok) == value


def test_an_id_that_cannot_be_encoded_is_not_echoed() -> None:
    raw = '{"type":"nope","id":"\\ud800x","data":{}}'
    assert code("chat", raw) == "invalid_message"
    assert peek_id(raw) is None
    assert peek_id('{"type":"nope","id":"ok-1","data":{"x":"\\udc00"}}') == "ok-1"


def test_an_error_frame_never_fails_on_client_text() -> None:
    import json

    from shared.errors import InvalidMessage
    from shared.schemas.wire import error_frame

    exc = InvalidMessage("bad \ud800 text")
    frame = json.loads(error_frame(exc, "2026-01-01T00:00:00.000Z", id="\udc00"))
    assert frame["data"] == {"code": "invalid_message"} and "id" not in frame
    assert frame["type"] == "error" and frame["error"].startswith("bad ")


_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    endpoint=st.sampled_from(["chat", "analytics", "collaboration"]),
    raw=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        _ANY_JSON.map(lambda v: json.dumps(v, ensure_ascii=False)),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["message", "edit", "subscribe", "auth", "x"])},
            optional={"id": _ANY_JSON, "data": _ANY_JSON, "token": _ANY_JSON},
        ).map(json.dumps),
    ),
)
def test_any_input_decodes_or_is_refused_with_a_protocol_code(endpoint: str, raw: Any) -> None:
    from shared.schemas.wire import error_frame

    try:
        decode_client_frame(endpoint, raw)
    except AGError as exc:
        assert exc.code in {"invalid_json", "invalid_message", "unknown_type"}
        frame = json.loads(error_frame(exc, "2026-01-01T00:00:00.000Z", id=peek_id(raw)))
        assert frame["data"]["code"] == exc.code
