"""A lean WebSocket client for load generation: thousands of sockets on one core.

The benchmark must measure the server, not its client, so frames are counted and scanned, never
decoded as JSON: a server frame is unmasked, so its payload is a slice of what arrived. The
handshake and the frame layout are RFC 6455's; what a load generator does not need (fragmented
messages from the server, extensions) is not offered in the handshake, so the server never
sends it.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

__all__ = ["FrameParser", "LoadSocket", "client_frame", "open_socket"]

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 1, 8, 9, 10


class FrameParser:
    """Server frames out of a byte stream (sans-I/O): ``feed`` returns ``(opcode, payload)``."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf
        buf += data
        out: list[tuple[int, bytes]] = []
        i, n = 0, len(buf)
        while n - i >= 2:
            size, head = buf[i + 1] & 0x7F, 2
            if size == 126:
                if n - i < 4:
                    break
                size, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
            elif size == 127:
                if n - i < 10:
                    break
                size, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            if n - i < head + size:
                break
            out.append((buf[i] & 0x0F, bytes(buf[i + head : i + head + size])))
            i += head + size
        del buf[:i]
        return out


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (clients must mask; RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


class LoadSocket(asyncio.Protocol):
    """One client socket; ``on_text(sock, payload)`` gets every text frame after the handshake."""

    def __init__(self, request: bytes, on_text: Callable[[LoadSocket, bytes], None]) -> None:
        self.request = request
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.parser = FrameParser()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._head = b""
        self.frames = 0  # text frames received
        self.seen = 0  # what the owner counts (messages, say)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status, data = self._head[:end], self._head[end + 4 :]
            if not status.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(status.split(b"\r\n")[0].decode()))
                self.close()
                return
            self.opened.set_result(None)
        on_text = self.on_text
        for op, payload in self.parser.feed(data):
            if op == OP_TEXT:
                self.frames += 1
                on_text(self, payload)
            elif op == OP_PING:
                self.send(client_frame(OP_PONG, payload))
            elif op == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closed.done():
                    self.closed.set_result(code)
                self.send(client_frame(OP_CLOSE, payload[:2]))
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection lost in the handshake"))
        if not self.closed.done():
            self.closed.set_result(1006)

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send_text(self, text: str) -> None:
        self.send(client_frame(OP_TEXT, text.encode()))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


S = TypeVar("S", bound=LoadSocket)


async def open_socket(
    url: str,
    on_text: Callable[[LoadSocket, bytes], None],
    timeout: float = 30.0,
    kind: type[S] = LoadSocket,  # type: ignore[assignment]
) -> S:
    """Connect and complete the handshake (``ws://`` only: a load generator on loopback)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_connection(
        lambda: kind(request, on_text), parts.hostname or "127.0.0.1", parts.port or 80
    )
    await asyncio.wait_for(sock.opened, timeout)
    return sock
