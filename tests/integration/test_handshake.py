"""WebSocket handshakes on the wire: the direct hand-over (``services/gateway/upgrade.py``) and
uvicorn's own way answer every kind of request as websockets always did."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import Stack, token

pytestmark = pytest.mark.integration

UPGRADE = b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
BASE = UPGRADE + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


async def status_line(stack: Stack, request: bytes) -> bytes:
    port = stack.gateways[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "request_head,status",
    [
        (b"GET /api/chat/ws HTTP/1.1\r\n" + BASE, b"101"),
        (b"GET /api/chat/ws HTTP/1.1\r\n" + BASE + b"X-Name: caf\xe9\r\n", b"101"),
        (
            b"GET /api/chat/ws HTTP/1.1\r\n"
            + BASE
            + b"".join(b"X-%d: 1\r\n" % i for i in range(130)),
            b"431",
        ),
        (b"GET /api/chat/ws HTTP/1.1\r\n" + BASE + b"X-Long: " + b"a" * 9000 + b"\r\n", b"431"),
        (b"GET /api/chat/ws?" + b"a" * 9000 + b" HTTP/1.1\r\n" + BASE, b"414"),
        (b"GET /api/chat/ws?x=\xc3\xa9 HTTP/1.1\r\n" + BASE, b"400"),
        (
            b"GET /api/chat/ws HTTP/1.1\r\n" + UPGRADE,
            b"400",
        ),
        (b"GET /api/chat/ws HTTP/1.1\r\n" + BASE + b"Transfer-Encoding: chunked\r\n", b"400"),
    ],
    ids=[
        "plain",
        "latin-1-value",
        "130-headers",
        "long-header",
        "long-url",
        "utf-8-url",
        "no-key",
        "body",
    ],
)
async def test_each_handshake_gets_the_answer_websockets_gives(
    stack: Stack, request_head: bytes, status: bytes
) -> None:
    line = await status_line(stack, request_head + b"\r\n")
    assert line.split(b" ")[1] == status, line


async def test_a_handshake_with_its_query_still_authenticates_and_serves(stack: Stack) -> None:
    path = stack.url(token=token("hs-user", "hs-room"), contextId="hs-room").split(":", 2)[2]
    path = path[path.index("/") :].encode()
    port = stack.gateways[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET " + path + b" HTTP/1.1\r\n" + BASE + b"\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 ")
        first = await asyncio.wait_for(reader.readexactly(2), 10)  # an unmasked text frame
        assert first[0] == 0x81
        size = first[1] if first[1] < 126 else int.from_bytes(await reader.readexactly(2), "big")
        assert b'"type":"connected"' in await asyncio.wait_for(reader.readexactly(size), 10)
    finally:
        writer.close()
