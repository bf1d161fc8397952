"""A scripted protocol peer on a real ``websockets`` server (127.0.0.1, port 0).

Each accepted socket becomes a :class:`Peer` the test drives: it authenticates the client
the way docs/protocol.md says (query parameters or a first ``auth`` frame), answers ``ping``
(unless told not to) and hands every other client frame to ``await peer.recv()``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

FACTOR = float(os.environ.get("AG_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float = 5.0) -> float:
    """A wait bound scaled by ``AG_TEST_TIMEOUT_FACTOR``."""
    return seconds * FACTOR


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_jwt(**claims: Any) -> str:
    """An unsigned-looking JWT; the client only reads ``exp``/``iat``, never verifies."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def token(lifetime: float = 3600.0, **claims: Any) -> str:
    now = time.time()
    return make_jwt(sub="u1", iat=now, exp=now + lifetime, **claims)


@dataclass
class Peer:
    """The server side of one client socket."""

    ws: ServerConnection
    query: dict[str, str]
    auth: dict[str, Any] | None = None
    answer_pings: bool = True
    pings: int = 0
    pinged: asyncio.Event = field(default_factory=asyncio.Event)
    frames: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None

    @property
    def token(self) -> str | None:
        return self.auth["token"] if self.auth else self.query.get("token")

    @property
    def last_seq(self) -> int | None:
        if self.auth is not None:
            return self.auth.get("lastSeq")
        value = self.query.get("lastSeq")
        return None if value is None else int(value)

    async def wait_for_pings(self, count: int, wait: float = 5.0) -> None:
        """Wait until ``count`` pings have arrived on this socket in total."""
        async with asyncio.timeout(timeout(wait)):
            while self.pings < count:
                self.pinged.clear()
                await self.pinged.wait()

    async def recv(self, wait: float = 5.0) -> dict[str, Any]:
        """The next client frame other than ``ping``."""
        return await asyncio.wait_for(self.frames.get(), timeout(wait))

    async def recv_type(self, type_: str, wait: float = 5.0) -> dict[str, Any]:
        frame = await self.recv(wait)
        assert frame["type"] == type_, frame
        return frame

    async def send(
        self,
        type_: str,
        data: Any = None,
        *,
        id: str | None = None,
        error: str | None = None,
        **extra: Any,
    ) -> None:
        frame: dict[str, Any] = {"type": type_, "timestamp": iso_now(), "data": data or {}}
        if id is not None:
            frame["id"] = id
        if error is not None:
            frame["error"] = error
        frame.update(extra)
        await self.ws.send(json.dumps(frame))

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)

    async def wait_closed(self, wait: float = 5.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout(wait))


class FakeServer:
    def __init__(self, *, auto_connect: bool = True, roles: list[str] | None = None) -> None:
        self.auto_connect = auto_connect
        self.roles = roles or ["instructor"]
        self.answer_pings = True
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self.accepted = 0
        self.url = ""

    async def next_peer(self, wait: float = 5.0) -> Peer:
        return await asyncio.wait_for(self.peers.get(), timeout(wait))

    async def _handler(self, ws: ServerConnection) -> None:
        self.accepted += 1
        assert ws.request is not None
        query = {k: v[-1] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}
        peer = Peer(ws, query, answer_pings=self.answer_pings)
        try:
            if self.auto_connect:
                if "token" not in query:
                    first = json.loads(await ws.recv())
                    assert first["type"] == "auth", first
                    peer.auth = first
                await peer.send("connected", self.connected_data(peer))
            self.peers.put_nowait(peer)
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "ping":
                    peer.pings += 1
                    peer.pinged.set()
                    if peer.answer_pings:
                        await peer.send("pong")
                    continue
                peer.frames.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            peer.close_code = ws.close_code
            peer.closed.set()

    def connected_data(self, peer: Peer) -> dict[str, Any]:
        context = peer.auth["contextId"] if peer.auth else peer.query.get("contextId")
        return {
            "connectionId": uuid.uuid4().hex,
            "userId": "u1",
            "username": "Ada",
            "contextId": context,
            "roles": self.roles,
            "serverTime": iso_now(),
        }


@asynccontextmanager
async def running(server: FakeServer, **serve_kwargs: Any) -> AsyncIterator[FakeServer]:
    async with serve(server._handler, "127.0.0.1", 0, **serve_kwargs) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        server.url = f"ws://127.0.0.1:{port}"
        yield server
