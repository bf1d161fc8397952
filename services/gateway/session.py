"""The life of one WebSocket, whatever the endpoint: auth, limits, decode, dispatch, close.

Endpoint-specific behaviour lives in an ``Endpoint`` (chat, analytics, collaboration); this
module owns what the protocol says of every socket: the auth handshake and its timeout, token
expiry and refresh, frame size and rate limits, error frames and close codes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from services.gateway import metrics
from services.gateway.connection import Conn, Followed
from services.gateway.hub import Hub
from shared.auth import AuthFailure, Identity, TokenVerifier
from shared.config import Settings
from shared.errors import (
    CLOSE_AUTH_TIMEOUT,
    CLOSE_FORBIDDEN,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNAUTHORIZED,
    AGError,
)
from shared.logs import get_logger
from shared.ratelimit import SlidingWindow
from shared.schemas.wire import AuthData, ClientFrame, decode_client_frame, peek_id
from shared.schemas.wire import encode_frame as _encode_frame
from shared.schemas.wire import error_frame as _error_frame
from shared.timefmt import ms_to_ts, now_ms

__all__ = ["Endpoint", "Reply", "SessionRunner", "connected_text", "frame_text", "error_text"]

log = get_logger(__name__)

Reply = Awaitable[str | None | Followed] | str | None


def frame_text(type: str, data: Any = None, *, id: str | None = None) -> str:
    return _encode_frame(type, ms_to_ts(now_ms()), data, id=id).decode()


def connected_text(conn: Conn) -> str:
    """The ``connected`` frame every endpoint sends first."""
    ident = conn.identity
    assert ident is not None
    data = {
        "connectionId": conn.id,
        "userId": ident.user_id,
        "username": ident.name,
        "contextId": conn.context_id,
        "roles": list(ident.roles),
        "serverTime": ms_to_ts(now_ms()),
    }
    return frame_text("connected", data)


def error_text(exc: AGError, id: str | None = None) -> str:
    metrics.ERRORS.labels(exc.code).inc()
    return _error_frame(exc, ms_to_ts(now_ms()), id=id).decode()


class Endpoint(Protocol):
    name: str

    def allowed(self, identity: Identity) -> bool: ...

    async def on_open(self, conn: Conn, last_seq: int | None) -> None: ...

    def handle(self, conn: Conn, frame: ClientFrame) -> Reply: ...

    async def on_close(self, conn: Conn) -> None: ...


def _parse_last_seq(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


class SessionRunner:
    def __init__(self, settings: Settings, hub: Hub, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.hub = hub
        self.verifier = verifier

    async def run(self, socket: WebSocket[Any, Any, Any], endpoint: Endpoint, peer: str) -> None:
        await socket.accept()
        conn = Conn(endpoint.name, socket.send, self.settings.outbound_queue, peer)  # type: ignore[arg-type]
        conn.on_sent = metrics.FRAMES_OUT.labels(endpoint.name).inc
        conn.start()
        self.hub.conns.add(conn)
        metrics.CONNECTIONS.labels(endpoint.name).inc()
        metrics.CONNECTIONS_TOTAL.labels(endpoint.name).inc()
        state = _State(self.settings)
        log.info("connection opened", extra={"connectionId": conn.id, "endpoint": endpoint.name})
        try:
            params = socket.query_params
            if params.get("token") is not None:
                auth = AuthData(
                    token=params.get("token"),
                    contextId=params.get("contextId"),
                    lastSeq=_parse_last_seq(params.get("lastSeq")),
                )
                try:
                    await self._authenticate(conn, endpoint, state, auth)
                except AGError as exc:
                    conn.push(error_text(exc))
                    conn.close(exc.close or CLOSE_UNAUTHORIZED, exc.message)
            await self._loop(socket, conn, endpoint, state)
        finally:
            state.cancel_expiry()
            if conn.joined:
                try:
                    await endpoint.on_close(conn)
                except Exception:
                    log.exception("endpoint close failed", extra={"connectionId": conn.id})
            self.hub.conns.discard(conn)
            await conn.stop()
            metrics.CONNECTIONS.labels(endpoint.name).dec()
            code = conn.close_code if conn.close_code is not None else state.peer_code
            metrics.CLOSES.labels(str(code)).inc()
            log.info(
                "connection closed",
                extra={
                    "connectionId": conn.id,
                    "code": code,
                    "userId": conn.user_id,
                    "contextId": conn.context_id,
                },
            )

    async def _loop(
        self, socket: WebSocket[Any, Any, Any], conn: Conn, endpoint: Endpoint, state: _State
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.auth_timeout_s
        while True:
            timeout = None if conn.identity or conn.closed else max(deadline - loop.time(), 0)
            try:
                event = await asyncio.wait_for(socket.receive(), timeout)
            except TimeoutError:
                conn.push(error_text(AGError("unauthenticated", "no auth frame in time")))
                conn.close(CLOSE_AUTH_TIMEOUT, "authentication timeout")
                deadline = float("inf")
                continue
            except WebSocketDisconnect as exc:
                state.peer_code = exc.code if exc.code is not None else 1006
                return
            if event["type"] == "websocket.disconnect":
                state.peer_code = event.get("code", 1000)
                return
            if conn.closed or state.closing:
                continue  # a close is under way; ignore what still arrives
            try:
                await self._frame(conn, endpoint, state, dict(event))
            except _Refused as refused:
                await self._refuse(conn, state, refused.error, refused.id)
            except AGError as exc:
                await self._refuse(conn, state, exc, None)
            except Exception:  # our fault, never the client's: say so and keep serving
                log.exception("frame handling failed", extra={"connectionId": conn.id})
                await conn.reply(error_text(AGError("internal", "internal error")))

    @staticmethod
    async def _refuse(conn: Conn, state: _State, exc: AGError, cid: str | None) -> None:
        """The error in its reply slot (after earlier replies), then the close it calls for."""
        code = exc.close
        if code:
            state.closing = True
        then = (lambda: conn.close(code, exc.message)) if code else None
        await conn.reply(error_text(exc, cid), then=then)

    async def _frame(
        self, conn: Conn, endpoint: Endpoint, state: _State, event: dict[str, Any]
    ) -> None:
        text: str | None = event.get("text")
        now = time.monotonic()
        if text is None:
            size = len(event.get("bytes") or b"")
            if size > self.settings.max_frame_bytes:
                return await self._oversize(conn, state, now, None)
            self._count(conn, state, now, None)
            await conn.reply(
                error_text(AGError("invalid_message", "binary frames are not accepted"))
            )
            return
        if len(text) * 4 > self.settings.max_frame_bytes:  # cheap bound before measuring
            if len(text.encode("utf-8", "surrogatepass")) > self.settings.max_frame_bytes:
                return await self._oversize(conn, state, now, peek_id(text))
        try:
            frame = decode_client_frame(endpoint.name, text)
        except AGError as exc:
            metrics.FRAMES_IN.labels(endpoint.name, "invalid").inc()
            cid = peek_id(text)
            self._count(conn, state, now, cid)
            await conn.reply(error_text(exc, cid))
            return
        metrics.FRAMES_IN.labels(endpoint.name, frame.type).inc()
        if frame.type == "ping":
            await conn.reply(frame_text("pong", {}, id=frame.id))
            return
        self._count(conn, state, now, frame.id)
        if frame.type == "auth":
            if conn.identity is not None:
                again = AGError("invalid_message", "already authenticated; use refresh")
                await conn.reply(error_text(again, frame.id))
                return
            try:
                await self._authenticate(conn, endpoint, state, frame.data)
            except AGError as exc:
                raise _Refused(exc, frame.id) from None
            return
        if conn.identity is None:
            await conn.reply(error_text(AGError("unauthenticated", "send auth first"), frame.id))
            return
        if frame.type == "refresh":
            await conn.reply(self._refresh(conn, endpoint, state, frame))
            return
        await conn.reply(endpoint.handle(conn, frame))

    def _count(self, conn: Conn, state: _State, now: float, cid: str | None) -> None:
        if not state.frames.hit(now):
            log.warning("frame rate limit", extra={"connectionId": conn.id, "userId": conn.user_id})
            raise _Refused(AGError("rate_limited", "too many frames", close=CLOSE_POLICY), cid)

    async def _oversize(self, conn: Conn, state: _State, now: float, cid: str | None) -> None:
        if not state.oversize.hit(now):
            conn.close(CLOSE_TOO_BIG, "frames too large")
            return
        limit = self.settings.max_frame_bytes
        await conn.reply(
            error_text(
                AGError("too_large", f"frame exceeds {limit} bytes", data={"limit": limit}), cid
            )
        )

    async def _authenticate(
        self, conn: Conn, endpoint: Endpoint, state: _State, auth: AuthData
    ) -> None:
        try:
            identity = self.verifier.verify(auth.token or "", time.time())
        except AuthFailure as exc:
            metrics.AUTH_FAILURES.labels(exc.reason).inc()
            log.info("auth failed", extra={"connectionId": conn.id, "reason": exc.reason})
            raise AGError("unauthenticated", exc.message, close=CLOSE_UNAUTHORIZED) from None
        context_id = auth.contextId
        if not context_id:
            metrics.AUTH_FAILURES.labels("context").inc()
            raise AGError("forbidden", "contextId is required", close=CLOSE_FORBIDDEN)
        if not identity.allows(context_id):
            metrics.AUTH_FAILURES.labels("context").inc()
            log.info("context refused", extra={"connectionId": conn.id, "userId": identity.user_id})
            raise AGError("forbidden", "token does not allow this context", close=CLOSE_FORBIDDEN)
        if not endpoint.allowed(identity):
            metrics.AUTH_FAILURES.labels("role").inc()
            raise AGError("forbidden", "role not allowed on this endpoint", close=CLOSE_FORBIDDEN)
        conn.identity = identity
        conn.context_id = context_id
        state.schedule_expiry(conn)
        await endpoint.on_open(conn, auth.lastSeq)
        conn.joined = True

    def _refresh(self, conn: Conn, endpoint: Endpoint, state: _State, frame: ClientFrame) -> str:
        assert conn.identity is not None and conn.context_id is not None
        try:
            new = self.verifier.verify(frame.data.token or "", time.time())
        except AuthFailure as exc:
            metrics.AUTH_FAILURES.labels(exc.reason).inc()
            message = f"refresh refused: {exc.message}"
            return error_text(AGError("unauthenticated", message), frame.id)
        if new.user_id != conn.identity.user_id or not new.allows(conn.context_id):
            return error_text(
                AGError("forbidden", "token is for another user or context"), frame.id
            )
        if not endpoint.allowed(new):  # e.g. an instructor's socket refreshed with a learner token
            return error_text(AGError("forbidden", "role not allowed on this endpoint"), frame.id)
        conn.identity = new
        state.schedule_expiry(conn)
        return frame_text(
            "refreshed", {"expiresAt": ms_to_ts(int(new.expires_at * 1000))}, id=frame.id
        )


class _Refused(Exception):
    """An AGError about one frame, with that frame's id for the error reply."""

    def __init__(self, error: AGError, cid: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.id = cid


class _State:
    """Per-connection limits and timers (kept out of Conn, which is the outbound side)."""

    def __init__(self, settings: Settings) -> None:
        self.frames = SlidingWindow(settings.rate_frames_per_minute)
        self.oversize = SlidingWindow(2)  # the third oversize frame in a minute closes
        self.peer_code: int | None = None
        self.closing = False  # an error that closes was queued: read nothing more
        self._expiry: asyncio.TimerHandle | None = None

    def schedule_expiry(self, conn: Conn) -> None:
        assert conn.identity is not None
        self.cancel_expiry()
        delay = max(conn.identity.expires_at - time.time(), 0)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire, conn)

    def cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    @staticmethod
    def _expire(conn: Conn) -> None:
        conn.push(error_text(AGError("token_expired", "token expired; refresh it")))
        conn.close(CLOSE_UNAUTHORIZED, "token expired")
