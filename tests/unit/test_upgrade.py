"""The handshake httptools parsed, handed to websockets as its own parser would have read it."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.http11 import MAX_LINE_LENGTH, Request
from websockets.streams import StreamReader

from services.gateway.upgrade import handshake_request

BASE = [
    (b"host", b"127.0.0.1:8000"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]


def websockets_parse(url: bytes, headers: list[tuple[bytes, bytes]]) -> Request:
    """What websockets' own parser makes of the same request written out."""
    reader = StreamReader()
    reader.feed_data(
        b"GET "
        + url
        + b" HTTP/1.1\r\n"
        + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
        + b"\r\n"
    )
    parser: Generator[None, None, Request] = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("the request was not complete")


tokens = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=20)
values = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c <= 126 or c >= 128).strip(b" \t")
)


@given(
    st.lists(st.tuples(tokens.map(str.encode), values), max_size=20),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789/?=&%.-_~", max_size=200),
)
def test_the_request_is_the_one_websockets_would_have_parsed(
    extra: list[tuple[bytes, bytes]], path: str
) -> None:
    headers = [h for h in BASE + extra if h[0] not in (b"transfer-encoding", b"content-length")]
    url = ("/" + path).encode()
    ours = handshake_request("GET", "1.1", url, headers)
    theirs = websockets_parse(url, headers)
    assert ours is not None
    assert (ours.method, ours.path, ours.protocol) == (theirs.method, theirs.path, theirs.protocol)
    assert list(ours.headers.raw_items()) == list(theirs.headers.raw_items())


@pytest.mark.parametrize(
    "method,version,url,headers",
    [
        ("POST", "1.1", b"/ws", BASE),
        ("GET", "1.0", b"/ws", BASE),
        ("GET", "1.1", b"/ws?x=\xc3\xa9", BASE),
        ("GET", "1.1", b"/" + b"a" * 9000, BASE),
        ("GET", "1.1", b"/ws", BASE + [(b"x-long", b"a" * 9000)]),
        ("GET", "1.1", b"/ws", BASE + [(b"x-%d" % i, b"1") for i in range(130)]),
        ("GET", "1.1", b"/ws", BASE + [(b"transfer-encoding", b"chunked")]),
        ("GET", "1.1", b"/ws", BASE + [(b"content-length", b"5")]),
        ("GET", "1.1", b"/ws", BASE + [(b"x-bad", b"a\x00b")]),
        ("GET", "1.1", b"/ws", BASE + [(b"bad name", b"1")]),
    ],
)
def test_what_only_websockets_can_judge_goes_its_way(
    method: str, version: str, url: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    assert handshake_request(method, version, url, headers) is None


def test_a_zero_content_length_is_tolerated_as_websockets_does() -> None:
    assert handshake_request("GET", "1.1", b"/ws", BASE + [(b"content-length", b"0")])


def websockets_accepts(url: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    try:
        websockets_parse(url, headers)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("over", range(-2, 3))
def test_lines_at_the_length_limit_are_judged_as_websockets_judges_them(over: int) -> None:
    url = b"/" + b"a" * (MAX_LINE_LENGTH - len(b"GET / HTTP/1.1\r\n") + over)
    assert (handshake_request("GET", "1.1", url, BASE) is not None) == websockets_accepts(url, BASE)
    value = b"v" * (MAX_LINE_LENGTH - len(b"x-long: \r\n") + over)
    headers = [*BASE, (b"x-long", value)]
    assert (handshake_request("GET", "1.1", b"/ws", headers) is not None) == (
        websockets_accepts(b"/ws", headers)
    )
