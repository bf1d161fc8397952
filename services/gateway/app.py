"""The gateway's Litestar application: routes, lifespan, and the uvicorn server around it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from litestar import Litestar, MediaType, Request, Response, WebSocket, get, post, websocket
from litestar.exceptions import HTTPException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.analytics import AnalyticsEndpoint
from services.gateway.chat import ChatEndpoint
from services.gateway.collaboration import CollaborationEndpoint
from services.gateway.commands import CommandClient
from services.gateway.connection import Conn
from services.gateway.fanout import FanOut
from services.gateway.gate import ConnectionGate
from services.gateway.heartbeat import Heartbeats
from services.gateway.ingest import Ingest
from services.gateway.parts import Parts
from services.gateway.session import Endpoint, SessionRunner
from services.gateway.web import web_handlers
from shared.auth import TokenVerifier
from shared.bus.nats import NatsBus, connect
from shared.config import Settings
from shared.errors import CLOSE_GOING_AWAY
from shared.logs import get_logger

__all__ = ["Gateway", "create_app"]

log = get_logger(__name__)


class _Stoppable(Protocol):
    async def stop(self) -> None: ...


class Gateway:
    """Owns the gateway's long-lived parts; started and stopped by the app's lifespan, in order:
    the bus, the command client, the fan-out, the endpoints, the heartbeats."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = TokenVerifier(settings)
        self.gateway_id = uuid.uuid4().hex[:12]
        self.bus: NatsBus | None = None
        self.conns: set[Conn] = set()
        self.endpoints: dict[str, Endpoint] = {}
        self.runner = SessionRunner(settings, self.verifier, self.conns)
        self.ingest: Ingest | None = None
        self.draining = False
        self._parts: list[_Stoppable] = []
        self._healed_at = 0.0

    async def start(self) -> None:
        while True:
            try:
                self.bus = await connect(self.settings, "gateway")
                break
            except Exception as exc:  # NATS not up yet: keep trying, /readyz says not ready
                log.warning("nats connect failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)  # retry backoff
        bus, settings = self.bus, self.settings
        commands = CommandClient(settings, bus, self.gateway_id)
        fanout = FanOut(settings, bus)
        heartbeats = Heartbeats(settings, bus, self.gateway_id)
        parts = Parts(settings, bus, fanout, commands, heartbeats)
        chat = ChatEndpoint(parts)
        analytics = AnalyticsEndpoint(parts)
        collaboration = CollaborationEndpoint(parts)
        self.endpoints = {"chat": chat, "analytics": analytics, "collaboration": collaboration}
        self.ingest = Ingest(settings, bus, self.verifier)
        await commands.start()
        await fanout.start()
        await chat.start()
        heartbeats.start()
        self._parts = [heartbeats, chat, fanout, commands]  # stopped in this order
        log.info("gateway started", extra={"gatewayId": self.gateway_id})

    async def drain(self) -> None:
        """Close every socket with 1001 (go elsewhere) and let the frames flush."""
        self.draining = True
        conns = list(self.conns)
        for conn in conns:
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.flushed() for c in conns)), 5.0)

    async def stop(self) -> None:
        await self.drain()
        for part in self._parts:
            await part.stop()
        if self.bus is not None:
            await self.bus.close()

    async def ready(self) -> bool:
        if self.bus is None or not self.bus.connected or self.draining:
            return False
        if await self.bus.streams_exist():
            return True
        # A memory stream is gone after a NATS restart: put it back rather than stay unready.
        now = asyncio.get_running_loop().time()
        if now - self._healed_at > 2.0:
            self._healed_at = now
            with contextlib.suppress(Exception):
                await self.bus.restore_streams()
        return await self.bus.streams_exist()


# HTTP errors answer in the project's shape, {"code", "error"}, as the ingest endpoint does.
_HTTP_CODES = {
    400: "invalid_message",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "invalid_message",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}
_HTTP_TEXTS = {
    404: "no such endpoint",
    405: "method not allowed here",
    413: "request body too large",
}


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, str]]:
    status = exc.status_code
    code = _HTTP_CODES.get(status, "internal" if status >= 500 else "invalid_message")
    text = _HTTP_TEXTS.get(status) or (exc.detail if status < 500 else "internal error")
    if status == 405 and (exc.headers or {}).get("allow"):
        text = f"{text}; allowed: {exc.headers['allow']}"  # type: ignore[index]
    return Response({"code": code, "error": text}, status_code=status, headers=exc.headers)


def _http_fault(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    log.error("request failed", exc_info=exc, extra={"path": request.url.path})
    return Response({"code": "internal", "error": "internal error"}, status_code=500)


async def _finished(*_: Any) -> Any:
    raise RuntimeError("this socket's handler has returned")


def create_app(settings: Settings) -> tuple[Any, Gateway]:
    gw = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    async def _serve(socket: WebSocket[Any, Any, Any], name: str) -> None:
        endpoint = gw.endpoints.get(name)
        if endpoint is None or gw.draining:
            # Accept, then 1001: a close before accept would reach the client as HTTP 403.
            await socket.accept()
            await socket.close(code=CLOSE_GOING_AWAY)
            return
        peer = socket.scope.get("state", {}).get("client_ip") or "unknown"
        try:
            await gw.runner.run(socket, endpoint, peer)
        finally:
            # Litestar's WebSocket reaches itself through the closures of its receive and send
            # (a cycle only a full collection frees, ~2.5 KB a closed socket); nothing uses
            # them once the handler returns.
            socket.receive = socket.send = _finished  # type: ignore[method-assign]

    @websocket("/api/chat/ws")
    async def chat_ws(socket: WebSocket[Any, Any, Any]) -> None:
        await _serve(socket, "chat")

    @websocket("/api/analytics/ws")
    async def analytics_ws(socket: WebSocket[Any, Any, Any]) -> None:
        await _serve(socket, "analytics")

    @websocket("/api/collaboration/ws")
    async def collaboration_ws(socket: WebSocket[Any, Any, Any]) -> None:
        await _serve(socket, "collaboration")

    @post(
        "/api/analytics/events",
        media_type=MediaType.JSON,
        request_max_body_size=settings.max_frame_bytes,
    )
    async def analytics_events(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        if gw.ingest is None or gw.draining:
            body = {"code": "unavailable", "error": "the gateway is not ready"}
            return Response(body, status_code=503)
        status, body = await gw.ingest.post(
            request.headers.get("authorization"),
            request.headers.get("idempotency-key"),
            await request.body(),
        )
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return Response(body, status_code=status, headers=headers)

    @get("/healthz", media_type=MediaType.JSON)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", media_type=MediaType.JSON)
    async def readyz() -> Response[dict[str, str]]:
        ok = await gw.ready()
        return Response({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    @get("/metrics")
    async def metrics_route() -> Response[bytes]:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app = Litestar(
        exception_handlers={HTTPException: _http_error, Exception: _http_fault},
        route_handlers=[
            chat_ws,
            analytics_ws,
            analytics_events,
            collaboration_ws,
            healthz,
            readyz,
            metrics_route,
            *web_handlers(settings),
        ],
        lifespan=[lifespan],
        openapi_config=None,  # no docs/debug endpoints open by default
        debug=False,
        logging_config=None,  # our JSON logging, set up by the entry point
    )
    return ConnectionGate(app, settings), gw
