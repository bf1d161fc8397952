"""The sans-I/O NATS protocol parser of the log tail: any split of the bytes, bad input refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bus import wire

_H408 = b"NATS/1.0 408 Request Timeout\r\n\r\n"
STREAM = (
    b'INFO {"server_id":"x","max_payload":1048576}\r\n'
    b"+OK\r\n"
    b"MSG ag.chat.c1 1 $JS.ACK.EVENTS.t.1.7.1.1700000000.3 5\r\nhello\r\n"
    b"PING\r\n" + b"HMSG _INBOX.a 1 %d %d\r\n" % (len(_H408), len(_H408)) + _H408 + b"\r\n"
    b"HMSG ag.x 2 r.1 12 15\r\nNATS/1.0\r\n\r\nabc\r\n"
    b"MSG empty 3 0\r\n\r\n"
    b"PONG\r\n"
    b"-ERR 'Authorization Violation'\r\n"
)


def parse(*chunks: bytes) -> list[wire.Frame]:
    p = wire.Parser()
    out: list[wire.Frame] = []
    for chunk in chunks:
        p.receive_data(chunk)
        out.extend(p.frames_received())
    return out


def test_every_frame_kind_is_read_in_order() -> None:
    frames = parse(STREAM)
    kinds = [type(f).__name__ for f in frames]
    assert kinds == ["Info", "Msg", "Ping", "Msg", "Msg", "Msg", "Pong", "Err"]
    info, msg, _, timeout, headed, empty, _, err = frames
    assert isinstance(info, wire.Info) and info.options["max_payload"] == 1048576
    assert msg == wire.Msg(b"ag.chat.c1", 1, b"$JS.ACK.EVENTS.t.1.7.1.1700000000.3", b"", b"hello")
    assert isinstance(timeout, wire.Msg) and timeout.reply == b"" and timeout.payload == b""
    assert wire.status_of(timeout.headers) == "408"
    assert headed == wire.Msg(b"ag.x", 2, b"r.1", b"NATS/1.0\r\n\r\n", b"abc")
    assert wire.status_of(headed.headers) == ""
    assert empty == wire.Msg(b"empty", 3, b"", b"", b"")
    assert err == wire.Err("Authorization Violation")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_frames(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert parse(*chunks) == parse(STREAM)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(min_size=1, max_size=40).filter(lambda s: b" " not in s))
def test_payloads_are_opaque_bytes(payload: bytes, subject: bytes) -> None:
    subject = subject.replace(b"\r", b"_").replace(b"\n", b"_").replace(b"\t", b"_")
    subject = subject.replace(b"\x0b", b"_").replace(b"\x0c", b"_").replace(b"\x1c", b"_")
    if not subject.split() or subject.split()[0] != subject:
        return  # not one token: NATS subjects hold no whitespace
    raw = b"MSG " + subject + b" 9 %d\r\n" % len(payload) + payload + b"\r\n"
    (msg,) = parse(raw[:7], raw[7:])
    assert msg == wire.Msg(subject, 9, b"", b"", payload)


def test_a_partial_frame_waits_for_the_rest() -> None:
    p = wire.Parser()
    p.receive_data(b"MSG a 1 10\r\n01234")
    assert p.frames_received() == []
    p.receive_data(b"56789\r")
    assert p.frames_received() == []
    p.receive_data(b"\n")
    assert p.frames_received() == [wire.Msg(b"a", 1, b"", b"", b"0123456789")]


@pytest.mark.parametrize(
    "raw",
    [
        b"MSG a 1\r\n",  # no size
        b"MSG a x 3\r\nabc\r\n",  # sid not a number
        b"MSG a 1 r extra 3\r\nabc\r\n",  # too many fields
        b"HMSG a 1 9 3\r\nabc\r\n",  # headers longer than the whole
        b"MSG a 1 -1\r\n\r\n",
        b"MSG a 1 3\r\nabcd\r\n",  # payload longer than announced
        b"WHAT\r\n",
    ],
)
def test_what_is_not_nats_is_refused(raw: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.Parser().receive_data(raw)


def test_a_control_line_without_end_is_refused_before_it_grows() -> None:
    p = wire.Parser()
    p.receive_data(b"MSG " + b"a" * 100)
    with pytest.raises(wire.ProtocolError):
        p.receive_data(b"a" * wire.MAX_CONTROL)


def test_a_payload_over_the_limit_is_refused() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.Parser(max_payload=10).receive_data(b"MSG a 1 11\r\n")


def test_connect_carries_the_url_credentials() -> None:
    line, ping = wire.connect("nats://al%40x:p%3Aw@h:4222", "n", "1").split(b"\r\n")[:2]
    opts = json.loads(line.removeprefix(b"CONNECT "))
    assert (opts["user"], opts["pass"], opts["name"], opts["headers"]) == ("al@x", "p:w", "n", True)
    assert ping == b"PING"
    token = json.loads(wire.connect("nats://s3cret@h", "n", "1").split(b"\r\n")[0][8:])
    assert token["auth_token"] == "s3cret" and "user" not in token
    bare = json.loads(wire.connect("h:4222", "n", "1").split(b"\r\n")[0][8:])
    assert "user" not in bare and "auth_token" not in bare


def test_client_frames() -> None:
    assert wire.sub("_INBOX.x", 1) == b"SUB _INBOX.x 1\r\n"
    assert wire.pub("a.b", "r", b"{}") == b"PUB a.b r 2\r\n{}\r\n"
