"""One authenticated WebSocket: the opening handshake, then reader, writer and heartbeat.

:class:`~.connection.Connection` makes a new :class:`Socket` for every (re)connection and
keeps everything that must survive a reconnect (requests, token, subscriptions) itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed

from ._dispatch import Frame
from ._ratelimit import SlidingWindow
from ._urls import with_query
from .frames import (
    AuthRequest,
    ConnectedFrame,
    FrameDecodeError,
    PingRequest,
    decode_server_frame,
    encode,
)

__all__ = ["Socket", "SocketEnded", "open_socket"]

_PING = encode(PingRequest())


class SocketEnded(Exception):
    """A socket ended, or failed to authenticate, with this close code."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed with {code} {reason}".strip())
        self.code = code
        self.reason = reason


def close_info(exc: WsConnectionClosed) -> tuple[int, str]:
    """The close code that ends the client's view of the socket.

    A close the server started counts with its code; one this side started (a protocol
    error, an oversize incoming message) is abnormal, 1006, and is retried.
    """
    if exc.rcvd is not None and (exc.sent is None or exc.rcvd_then_sent):
        return exc.rcvd.code, exc.rcvd.reason
    return 1006, str(exc)


def decode_or_log(raw: bytes | str, logger: logging.Logger) -> Frame | None:
    try:
        return decode_server_frame(raw)
    except FrameDecodeError as exc:
        logger.warning("dropping undecodable frame: %s", exc)
        return None


_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def decode_message(raw: bytes | str, logger: logging.Logger) -> list[Frame]:
    """The frames of one WebSocket message: one frame, or (``batch=1``) a JSON array of
    frames in order."""
    data = raw.encode() if isinstance(raw, str) else raw
    if data.lstrip()[:1] != b"[":
        frame = decode_or_log(data, logger)
        return [] if frame is None else [frame]
    try:
        parts = _batch_decoder.decode(data)
    except msgspec.DecodeError as exc:
        logger.warning("dropping undecodable batch: %s", exc)
        return []
    return [f for part in parts if (f := decode_or_log(bytes(part), logger)) is not None]


async def open_socket(
    url: str,
    *,
    token: str,
    context_id: str,
    auth_mode: Literal["query", "message"],
    last_seq: int | None,
    open_timeout: float,
    connect_options: Mapping[str, Any],
    on_early_frame: Callable[[Frame], None],
    logger: logging.Logger,
) -> tuple[ClientConnection, ConnectedFrame, list[Frame]]:
    """Connect and authenticate; return the socket, its ``connected`` frame and the frames
    that came in the same message after it (batched delivery, ``batch=1``: always asked for).

    Frames before ``connected`` (an ``error`` ahead of a 4401 close, say) go to
    ``on_early_frame``. Raises :class:`SocketEnded` when the server closes first, and
    whatever ``connect`` raises (``InvalidStatus`` for an HTTP refusal of the upgrade).

    An HTTP refusal is never taken as the verdict on the token: the protocol authenticates
    inside the socket (4401/4403 closes), and the real gateway refuses upgrades only for
    passing reasons: 429 over the connection rate, and 403 while it drains for shutdown
    (it closes before accepting), which is exactly where a 1001 sends every client at once.
    """
    params = {"batch": "1"}  # several frames per message when the server has them ready
    if auth_mode == "query":
        params.update(token=token, contextId=context_id)
        if last_seq is not None:
            params["lastSeq"] = str(last_seq)
    url = with_query(url, params)
    # Protocol-level keepalive is off: the application ``ping`` below covers liveness,
    # and the server's own WebSocket pings are still answered by websockets.
    options = {"open_timeout": open_timeout, "ping_interval": None, **connect_options}
    ws = await ws_connect(url, **options)
    try:
        if auth_mode == "message":
            auth = AuthRequest(token=token, context_id=context_id, last_seq=last_seq)
            await ws.send(encode(auth))
        async with asyncio.timeout(open_timeout):
            while True:
                frames = decode_message(await ws.recv(decode=False), logger)
                for i, frame in enumerate(frames):
                    if isinstance(frame, ConnectedFrame):
                        return ws, frame, frames[i + 1 :]
                    on_early_frame(frame)
    except WsConnectionClosed as exc:
        raise SocketEnded(*close_info(exc)) from exc
    except BaseException:
        ws.transport.abort()
        raise


class Socket:
    """Runs one authenticated socket until it ends.

    Writes go through one queue drained by one task, so frames leave in the order they
    were queued (requests re-sent after a reconnect keep their order too).
    """

    def __init__(
        self,
        ws: ClientConnection,
        *,
        on_frame: Callable[[Frame], None],
        ping_interval: float,
        ping_timeout: float,
        limiter: SlidingWindow | None,
        logger: logging.Logger,
    ) -> None:
        self.ws = ws
        self._on_frame = on_frame
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._limiter = limiter
        self._logger = logger
        self._queue: deque[str] = deque()
        self._ping_due = False
        self._ready = asyncio.Event()
        self._last_rx = asyncio.get_running_loop().time()
        if limiter is not None:
            limiter.reset()  # the server counts frames per connection

    def enqueue(self, payload: str) -> None:
        self._queue.append(payload)
        self._ready.set()

    async def run(self) -> tuple[int, str]:
        """Read, write and ping until the socket ends; return its close code and reason."""
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write())
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await asyncio.wait([reader, writer, heartbeat], return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():  # a silent peer or a failed write: drop the socket
                self.ws.transport.abort()
                await asyncio.wait([reader])
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                if not isinstance(writer.exception(), WsConnectionClosed):
                    self._logger.error("writer failed", exc_info=writer.exception())
            code, reason = reader.result()
            if heartbeat.done() and code == 1006:
                reason = "heartbeat timeout"
            return code, reason
        finally:
            for task in (reader, writer, heartbeat):
                task.cancel()
            await asyncio.gather(reader, writer, heartbeat, return_exceptions=True)

    async def close(self) -> None:
        """Send close 1000 and wait (bounded by websockets' close_timeout) for the echo."""
        with contextlib.suppress(Exception):
            await self.ws.close(1000)

    def abort(self) -> None:
        self.ws.transport.abort()

    async def _read(self) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        try:
            while True:
                raw = await self.ws.recv(decode=False)
                self._last_rx = loop.time()
                for frame in decode_message(raw, self._logger):
                    try:
                        self._on_frame(frame)
                    except Exception:  # one bad frame (or a bug handling it) must not kill us
                        self._logger.exception("failed to handle a %r frame", frame.type)
        except WsConnectionClosed as exc:
            return close_info(exc)

    def _ping(self) -> None:
        self._ping_due = True
        self._ready.set()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._ping_due:
                # The server does not count pings against its limit, so they skip the
                # pacing and the queue: a long pacing wait must not starve the heartbeat.
                self._ping_due = False
                await self.ws.send(_PING)
                continue
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            if self._limiter is not None:
                wait = self._limiter.wait_time(loop.time())
                if wait > 0:
                    self._ready.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._ready.wait(), wait)
                    continue
                self._limiter.record(loop.time())
            await self.ws.send(self._queue.popleft())

    async def _heartbeat(self) -> None:
        """Ping every interval; return once nothing arrived for interval + timeout."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self._ping_interval
        while True:
            now = loop.time()
            deadline = self._last_rx + self._ping_interval + self._ping_timeout
            if now >= deadline:
                silent = now - self._last_rx
                self._logger.warning("nothing received for %.2fs: socket is dead", silent)
                return
            if now >= next_ping:
                self._ping()
                next_ping = now + self._ping_interval
            await asyncio.sleep(min(next_ping, deadline) - now)
