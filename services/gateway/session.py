"""The life of one WebSocket, whatever the endpoint: auth, limits, decode, dispatch, close.

Endpoint-specific behaviour lives in an ``Endpoint`` (chat, analytics, collaboration); this
module owns what the protocol says of every socket: the auth handshake and its timeout, token
expiry and refresh, frame size and rate limits, error frames and close codes. Errors are raised
as ``Refusal`` subclasses anywhere below; ``refuse`` turns one into its frame and, when the map
(``shared.errors.protocol``) says so, the close after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl

import msgspec
from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from services.gateway import metrics
from services.gateway.connection import Authed, Conn, ConnState, Reply, ReplyLike
from services.gateway.expiry import Expiries
from services.gateway.outlet import Flusher, outlet_of
from shared.auth import AuthFailure, Identity, TokenVerifier
from shared.config import Settings
from shared.errors import (
    CLOSE_TOO_BIG,
    AuthTimeout,
    BadToken,
    Forbidden,
    Internal,
    InvalidMessage,
    NotAllowedHere,
    Refusal,
    TokenExpired,
    TooLarge,
    TooManyFrames,
    Unauthenticated,
    protocol,
)
from shared.logs import get_logger
from shared.ratelimit import SlidingWindow
from shared.schemas.frames import ConnectedData, Empty, RefreshedData
from shared.schemas.wire import AuthData, ClientFrame, decode_client_frame, peek_id
from shared.schemas.wire import encode_frame as _encode_frame
from shared.schemas.wire import error_frame as _error_frame
from shared.timefmt import ms_to_ts, now_ms

__all__ = [
    "Endpoint",
    "SessionRunner",
    "connected_text",
    "dispatch",
    "error_text",
    "frame_text",
]

log = get_logger(__name__)

Handled = Awaitable[ReplyLike] | ReplyLike


def frame_text(type: str, data: msgspec.Struct | None = None, *, id: str | None = None) -> str:
    return _encode_frame(type, ms_to_ts(now_ms()), data, id=id).decode()


def connected_text(authed: Authed) -> str:
    """The ``connected`` frame every endpoint sends first."""
    ident = authed.identity
    data = ConnectedData(
        connectionId=authed.id,
        userId=ident.user_id,
        username=ident.name,
        contextId=authed.context_id,
        roles=list(ident.roles),
        serverTime=ms_to_ts(now_ms()),
    )
    return frame_text("connected", data)


def error_text(exc: BaseException, id: str | None = None) -> str:
    metrics.ERRORS.labels(protocol(exc).code).inc()
    return _error_frame(exc, ms_to_ts(now_ms()), id=id).decode()


class Endpoint(Protocol):
    name: str

    def allowed(self, identity: Identity) -> bool: ...
    async def on_open(self, authed: Authed, last_seq: int | None) -> None: ...
    def handle(self, authed: Authed, frame: ClientFrame) -> Handled: ...
    async def on_close(self, authed: Authed) -> None: ...


def _parse_last_seq(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


def take_query(scope: MutableMapping[str, Any]) -> tuple[bool, AuthData | None]:
    """``batch`` and the query's auth (when it has a token), read once and taken out of the
    scope: the query carries the bearer token, which an open socket then no longer holds (nor
    the ~1 KB of its parsed copies). Parsed as Litestar parses a query; the first value wins."""
    query = scope.get("query_string") or b""
    scope["query_string"] = b""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True, separator="&"):
        params.setdefault(name, value)
    token = params.get("token")
    auth = None
    if token is not None:
        auth = AuthData(
            token=token,
            contextId=params.get("contextId"),
            lastSeq=_parse_last_seq(params.get("lastSeq")),
        )
    return params.get("batch") == "1", auth


class SessionRunner:
    def __init__(self, settings: Settings, verifier: TokenVerifier, conns: set[Conn]) -> None:
        self.settings = settings
        self.verifier = verifier
        self.conns = conns  # every open connection of this gateway (drained on shutdown)
        self.flusher = Flusher(settings.lazy_flush_ms / 1000)
        self.expiries: Expiries[Conn] = Expiries(_expire)  # one timer for every socket's token
        self._counters: dict[str, Callable[[int], object]] = {}

    def _on_sent(self, endpoint: str) -> Callable[[int], object]:
        """The endpoint's frames-out counter, one bound method shared by its sockets."""
        found = self._counters.get(endpoint)
        if found is None:
            found = self._counters[endpoint] = metrics.FRAMES_OUT.labels(endpoint).inc
        return found

    async def run(self, socket: WebSocket[Any, Any, Any], endpoint: Endpoint, peer: str) -> None:
        await socket.accept()
        batch, auth = take_query(cast("dict[str, Any]", socket.scope))
        conn = Conn(
            endpoint.name,
            socket.send,  # type: ignore[arg-type]
            self.settings.outbound_queue,
            peer,
            outlet_of(socket.scope),
            self.flusher,
            batch=batch,
        )
        conn.on_sent = self._on_sent(endpoint.name)
        conn.start()
        self.conns.add(conn)
        metrics.CONNECTIONS.labels(endpoint.name).inc()
        metrics.CONNECTIONS_TOTAL.labels(endpoint.name).inc()
        state = _Limits(self.settings)
        log.info("connection opened", extra={"connectionId": conn.id, "endpoint": endpoint.name})
        try:
            if auth is not None:
                try:
                    await self._authenticate(conn, endpoint, auth)
                except Refusal as exc:
                    self._refuse_now(conn, exc)
                auth = None  # this frame lives as long as the socket; the token need not
            await self._loop(socket, conn, endpoint, state)
        finally:
            self.expiries.discard(conn)
            if conn.authed is not None:  # on_open ran (maybe not to its end): undo what it did
                try:
                    await endpoint.on_close(conn.authed)
                except Exception:
                    log.exception("endpoint close failed", extra={"connectionId": conn.id})
            self.conns.discard(conn)
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
            conn.authed = None  # Authed refers back to it: a cycle only the collector would free

    async def _loop(
        self, socket: WebSocket[Any, Any, Any], conn: Conn, endpoint: Endpoint, state: _Limits
    ) -> None:
        """Read frames until the peer goes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.auth_timeout_s
        while True:
            waiting = conn.state is ConnState.AUTHENTICATING
            try:
                if waiting:
                    timeout = max(deadline - loop.time(), 0)
                    event = await asyncio.wait_for(socket.receive(), timeout)
                else:  # no wait_for coroutine parked on every idle socket (~0.5 KB each)
                    event = await socket.receive()
            except TimeoutError:
                self._refuse_now(conn, AuthTimeout("no auth frame in time"))
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
            except Refusal as exc:
                await self._refuse(conn, state, exc, None)
            except Exception:  # our fault, never the client's: say so and keep serving
                log.exception("frame handling failed", extra={"connectionId": conn.id})
                await conn.reply(error_text(Internal("internal error")))

    @staticmethod
    def _refuse_now(conn: Conn, exc: Refusal) -> None:
        """An error outside any frame's reply slot (at connect, on a timer), then its close."""
        conn.push(error_text(exc))
        close = protocol(exc).close
        if close:
            conn.close(close, exc.message)

    @staticmethod
    async def _refuse(conn: Conn, state: _Limits, exc: Refusal, cid: str | None) -> None:
        """The error in its reply slot (after earlier replies), then the close it calls for."""
        code = protocol(exc).close
        then = (lambda: conn.close(code, exc.message)) if code else None
        if code:
            state.closing = True  # read nothing more; the close follows the reply
        await conn.reply(Reply(error_text(exc, cid), then))

    async def _frame(
        self, conn: Conn, endpoint: Endpoint, state: _Limits, event: dict[str, Any]
    ) -> None:
        text: str | None = event.get("text")
        now = time.monotonic()
        if text is None:
            size = len(event.get("bytes") or b"")
            if size > self.settings.max_frame_bytes:
                await self._oversize(conn, state, now, None)
                return
            self._count(conn, state, now, None)
            await conn.reply(error_text(InvalidMessage("binary frames are not accepted")))
            return
        if len(text) * 4 > self.settings.max_frame_bytes:  # cheap bound before measuring
            if len(text.encode("utf-8", "surrogatepass")) > self.settings.max_frame_bytes:
                await self._oversize(conn, state, now, peek_id(text))
                return
        try:
            frame = decode_client_frame(endpoint.name, text)
        except Refusal as exc:
            metrics.FRAMES_IN.labels(endpoint.name, "invalid").inc()
            cid = peek_id(text)
            self._count(conn, state, now, cid)
            await conn.reply(error_text(exc, cid))
            return
        metrics.FRAMES_IN.labels(endpoint.name, frame.type).inc()
        if frame.type == "ping":
            await conn.reply(frame_text("pong", Empty(), id=frame.id))
            return
        self._count(conn, state, now, frame.id)
        authed = conn.authed
        if frame.type == "auth":
            if authed is not None:
                again = InvalidMessage("already authenticated; use refresh")
                await conn.reply(error_text(again, frame.id))
                return
            try:
                await self._authenticate(conn, endpoint, frame.data)
            except Refusal as exc:
                raise _Refused(exc, frame.id) from None
            return
        if authed is None:
            await conn.reply(error_text(Unauthenticated("send auth first"), frame.id))
            return
        if frame.type == "refresh":
            await conn.reply(self._refresh(authed, endpoint, frame))
            return
        await conn.reply(dispatch(endpoint, authed, frame))

    def _count(self, conn: Conn, state: _Limits, now: float, cid: str | None) -> None:
        if not state.frames.hit(now):
            log.warning("frame rate limit", extra={"connectionId": conn.id, "userId": conn.user_id})
            raise _Refused(TooManyFrames("too many frames"), cid)

    async def _oversize(self, conn: Conn, state: _Limits, now: float, cid: str | None) -> None:
        if not state.oversize.hit(now):
            conn.close(CLOSE_TOO_BIG, "frames too large")
            return
        limit = self.settings.max_frame_bytes
        await conn.reply(
            error_text(TooLarge(f"frame exceeds {limit} bytes", {"limit": limit}), cid)
        )

    def _verify(self, token: str | None) -> Identity:
        try:
            return self.verifier.verify(token or "", time.time())
        except AuthFailure as exc:
            metrics.AUTH_FAILURES.labels(exc.reason).inc()
            raise BadToken(exc.message, {"reason": exc.reason}) from None

    async def _authenticate(self, conn: Conn, endpoint: Endpoint, auth: AuthData) -> None:
        try:
            identity = self._verify(auth.token)
        except BadToken as exc:
            log.info("auth failed", extra={"connectionId": conn.id, "reason": exc.data["reason"]})
            raise BadToken(exc.message) from None
        context_id = auth.contextId
        if not context_id:
            metrics.AUTH_FAILURES.labels("context").inc()
            raise NotAllowedHere("contextId is required")
        if not identity.allows(context_id):
            metrics.AUTH_FAILURES.labels("context").inc()
            log.info("context refused", extra={"connectionId": conn.id, "userId": identity.user_id})
            raise NotAllowedHere("token does not allow this context")
        if not endpoint.allowed(identity):
            metrics.AUTH_FAILURES.labels("role").inc()
            raise NotAllowedHere("role not allowed on this endpoint")
        authed = conn.open(identity, context_id)
        self.expiries.set(conn, identity.expires_at)
        await endpoint.on_open(authed, auth.lastSeq)

    def _refresh(self, authed: Authed, endpoint: Endpoint, frame: ClientFrame) -> str:
        try:
            new = self._verify(frame.data.token)
        except BadToken as exc:
            return error_text(Unauthenticated(f"refresh refused: {exc.message}"), frame.id)
        if new.user_id != authed.user_id or not new.allows(authed.context_id):
            return error_text(Forbidden("token is for another user or context"), frame.id)
        if not endpoint.allowed(new):  # e.g. an instructor's socket refreshed with a learner token
            return error_text(Forbidden("role not allowed on this endpoint"), frame.id)
        authed.identity = new
        self.expiries.set(authed.conn, new.expires_at)
        expires = RefreshedData(ms_to_ts(int(new.expires_at * 1000)))
        return frame_text("refreshed", expires, id=frame.id)


async def _as_frame(handled: Awaitable[ReplyLike], cid: str | None) -> ReplyLike:
    try:
        return await handled
    except Refusal as exc:
        return error_text(exc, cid)


def dispatch(endpoint: Endpoint, authed: Authed, frame: ClientFrame) -> Handled:
    """The endpoint's reply to a frame; a refusal raised while it is made, at once or later,
    becomes that frame's error reply."""
    try:
        handled = endpoint.handle(authed, frame)
    except Refusal as exc:
        return error_text(exc, frame.id)
    if handled is None or isinstance(handled, str | Reply):
        return handled
    return _as_frame(handled, frame.id)


class _Refused(Exception):
    """A refusal of one frame, with that frame's id for the error reply."""

    def __init__(self, error: Refusal, cid: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.id = cid


class _Limits:
    """Per-connection limits (kept out of Conn, which is the outbound side)."""

    __slots__ = ("frames", "oversize", "peer_code", "closing")

    def __init__(self, settings: Settings) -> None:
        self.frames = SlidingWindow(settings.rate_frames_per_minute)
        self.oversize = SlidingWindow(2)  # the third oversize frame in a minute closes
        self.peer_code: int | None = None
        self.closing = False  # an error that closes was queued: read nothing more


def _expire(conn: Conn) -> None:
    SessionRunner._refuse_now(conn, TokenExpired("token expired; refresh it"))
