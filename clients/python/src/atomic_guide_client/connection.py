"""The connection core shared by the chat, analytics and collaboration clients.

One :class:`Connection` is one logical session with one endpoint. Per WebSocket it runs a
:class:`~._socket.Socket` (reader, writer, heartbeat) and a token refresher, and replaces
the socket when it drops as :func:`~._policy.after_close` decides from the close code.
Requests (frames that get a reply) wait in a bounded outbox until answered and are re-sent
with the same ``id`` after a reconnect. ``typing``, ``cursor`` and ``ping`` are
fire-and-forget: sent only while connected, else dropped (a stale indicator is worse
than none).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, ClassVar, Self, TypeAlias, Unpack

from websockets.asyncio.client import ClientConnection

from ._dispatch import Callback, Frame, Handlers, Inbox, OwnedTasks
from ._policy import after_close
from ._ratelimit import SlidingWindow
from ._requests import Requests
from ._socket import Socket, SocketEnded, open_socket
from ._token import TokenClock
from ._urls import endpoint_url
from .config import ClientSettings, ConnectionOptions
from .errors import AuthError, ConnectionClosed, Disconnected, ForbiddenError
from .frames import (
    FIRE_AND_FORGET,
    ClientFrame,
    ConnectedFrame,
    PongFrame,
    RefreshRequest,
    encode,
    frame_type,
)
from .payloads import ConnectedInfo

__all__ = ["Connection", "State", "TokenProvider"]

TokenProvider: TypeAlias = Callable[[], str | Awaitable[str]]


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    CLOSED = "closed"


class Connection:
    """A reconnecting, authenticating WebSocket client for one endpoint of one context.

    Args:
        url: ``ws://`` / ``wss://`` (or ``http(s)://``) URL; a URL without a path gets the
            endpoint path of the subclass (``/api/chat/ws``...) appended.
        context_id: the LTI context (room) to enter.
        token_provider: returns a JWT, sync or async; called before every connection
            attempt and when a refresh is due. A plain string is used as is.
        **options: :class:`~.config.ConnectionOptions` (ping interval, backoff, bounds...).
    """

    path: ClassVar[str | None] = None

    def __init__(
        self,
        url: str,
        context_id: str,
        token_provider: TokenProvider | str,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        settings = ClientSettings(**options)
        self.settings = settings
        self.url = endpoint_url(url, self.path)
        self.context_id = context_id
        self._token_provider: TokenProvider = (
            (lambda: token_provider) if isinstance(token_provider, str) else token_provider
        )
        self._backoff = settings.backoff
        self._logger = settings.logger
        self._clock: Callable[[], float] = time.time

        self._requests = Requests(
            max_pending=settings.max_pending,
            retry_unavailable=settings.retry_unavailable,
            backoff=self._backoff,
            write=self._enqueue,
        )
        self._handlers = Handlers(self._logger)
        self._inbox = Inbox(settings.max_inbox)
        fpm = settings.frames_per_minute
        self._limiter = SlidingWindow(fpm) if fpm is not None else None
        self._tasks = OwnedTasks(self._logger)
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._state = State.IDLE
        self._settled = asyncio.Event()  # set while connected, and for good once closed
        self._closed = asyncio.Event()
        self._terminal: ConnectionClosed | None = None
        self._info: ConnectedInfo | None = None
        self._socket: Socket | None = None
        self._tokens = TokenClock(settings.refresh_margin)

    # --- public API -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is State.CONNECTED

    @property
    def info(self) -> ConnectedInfo | None:
        """The ``connected`` data of the current (or last) socket."""
        return self._info

    @property
    def pending(self) -> int:
        """Requests awaiting their reply (the count ``max_pending`` bounds)."""
        return len(self._requests)

    @property
    def dropped_frames(self) -> int:
        """Frames discarded from the iteration inbox because nobody consumed them."""
        return self._inbox.dropped

    def on(self, type_: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(frame)`` for every delivered frame of ``type_`` (``"*"``: all).

        Sync callbacks run inline, in arrival order; async ones are started as tasks the
        client owns (so they may await replies). Returns a function that unregisters.
        Replies correlated to a ``send()`` go to its future instead, and ``pong`` is
        consumed by the heartbeat.
        """
        return self._handlers.add(type_, callback)

    async def connect(self) -> ConnectedInfo:
        """Start the client and wait for the first ``connected`` frame.

        Retries per the backoff policy; raises ``AuthError``/``ForbiddenError``/... when
        the server refuses for good. Wrap in ``asyncio.timeout`` to bound the wait.
        """
        if self._state is State.CLOSED:
            raise self._terminal or ConnectionClosed(1000, "client closed")
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._run(), name=f"ag-client {self.url}")
        await self._settled.wait()
        if self._info is not None and self._state is State.CONNECTED:
            return self._info
        raise self._terminal or ConnectionClosed(1000, "client closed")

    def send(self, frame: ClientFrame, *, request_id: str | None = None) -> asyncio.Future[Any]:
        """Send a request; the future resolves with the ``data`` of its reply.

        The frame gets ``request_id`` (or its own ``id``, or a fresh uuid4 hex) and is
        kept until the reply arrives: while disconnected it waits, and after a reconnect
        it is re-sent with the same ``id``. An ``error`` reply fails the future with
        :class:`ServerError`. Raises :class:`QueueFull` (nothing is dropped) when
        ``max_pending`` requests wait, :class:`ConnectionClosed` once closed. Cancelling
        the future withdraws the request (it may still have reached the server).
        """
        kind = frame_type(frame)
        if kind in FIRE_AND_FORGET:
            raise TypeError(f"{kind!r} frames get no reply; use send_nowait()")
        if kind in ("auth", "refresh"):
            raise ValueError(f"{kind!r} frames are managed by the client")
        return self._request(frame, request_id=request_id)

    def send_nowait(self, frame: ClientFrame) -> bool:
        """Send a fire-and-forget frame (typing, cursor, ping) if connected; else drop it."""
        kind = frame_type(frame)
        if kind not in FIRE_AND_FORGET:
            raise TypeError(f"{kind!r} frames expect a reply; use send()")
        return self._enqueue(encode(frame))

    async def close(self) -> None:
        """Close with 1000, stop every task, fail waiting requests with ConnectionClosed."""
        if self._state is State.CLOSED:
            return
        self._closing = True
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            await asyncio.wait([supervisor])
        self._finish(None)

    async def wait_closed(self) -> None:
        """Wait until the client ends; raise what ended it unless that was a clean close."""
        await self._closed.wait()
        if self._terminal is not None and self._terminal.code != 1000:
            raise self._terminal

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Frame:
        return await self._inbox.get()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- hooks for the endpoint clients -----------------------------------------------

    def _last_seq(self) -> int | None:
        """``lastSeq`` to resume from on the next connection (chat)."""
        return None

    def _on_open(self) -> None:
        """A socket is authenticated; send connection-scoped requests (re-join ...)."""

    def _on_frame(self, frame: Frame) -> Iterable[Frame]:
        """See every frame in arrival order; return the frames to deliver."""
        return (frame,)

    def _on_disconnect(self) -> None:
        """The socket is gone (a reconnect may follow)."""

    # --- requests -----------------------------------------------------------------------

    def _request(
        self,
        frame: ClientFrame,
        *,
        request_id: str | None = None,
        scoped: bool = False,
        counted: bool = True,
    ) -> asyncio.Future[Any]:
        if self._state is State.CLOSED:
            raise self._terminal or ConnectionClosed(1000, "client closed")
        if scoped and self._state is not State.CONNECTED:
            raise Disconnected("not connected")
        return self._requests.create(frame, request_id=request_id, scoped=scoped, counted=counted)

    def _enqueue(self, payload: str) -> bool:
        if self._socket is None:
            return False
        self._socket.enqueue(payload)
        return True

    # --- delivery -----------------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        entry = self._requests.match(frame)
        if entry is not None and self._requests.will_retry(entry, frame):
            self._requests.settle(entry, frame)  # not an answer yet: hooks never see it
            return
        deliver = list(self._on_frame(frame))
        if entry is not None:
            self._requests.settle(entry, frame)
        for item in deliver:
            if item is frame and (entry is not None or isinstance(frame, PongFrame)):
                continue
            self._deliver(item)

    def _deliver(self, frame: Frame) -> None:
        for awaitable in self._handlers.dispatch(frame):
            self._spawn(awaitable)
        self._inbox.put(frame)

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``awaitable`` as a task owned (and cancelled on close) by the client."""
        return self._tasks.spawn(awaitable)

    # --- lifecycle ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._reconnect_forever()
        except Exception as exc:  # a bug: end loudly rather than leave waiters hanging
            self._logger.exception("connection supervisor failed")
            error = ConnectionClosed(1011, f"client error: {exc!r}")
            error.__cause__ = exc
            self._finish(error)

    async def _reconnect_forever(self) -> None:
        retries = 0
        while True:
            self._state = State.CONNECTING
            lived = 0.0
            failure: Exception
            try:
                ws, connected, rest = await self._open()
            except (AuthError, ForbiddenError) as exc:
                self._finish(exc)
                return
            except SocketEnded as ended:
                code, reason, failure = ended.code, ended.reason, ended
            except Exception as exc:  # DNS, refused, TLS, HTTP 429/5xx, token provider
                self._logger.warning("connecting to %s failed: %r", self.url, exc)
                code, reason, failure = 1006, repr(exc), exc
            else:
                retries = 0
                started = asyncio.get_running_loop().time()
                code, reason = await self._serve(ws, connected, rest)
                lived = asyncio.get_running_loop().time() - started
                failure = SocketEnded(code, reason)
            step = after_close(code, reason, lived=lived, retries=retries, backoff=self._backoff)
            if isinstance(step, ConnectionClosed):
                step.__cause__ = failure
                self._finish(step)
                return
            delay, retries = step.delay, step.retries
            self._logger.info("reconnecting in %.2fs after close %s %s", delay, code, reason)
            self._state = State.BACKING_OFF
            await asyncio.sleep(delay)

    async def _open(self) -> tuple[ClientConnection, ConnectedFrame, list[Frame]]:
        token = await self._fetch_token()
        ws, connected, rest = await open_socket(
            self.url,
            token=token,
            context_id=self.context_id,
            auth_mode=self.settings.auth_mode,
            last_seq=self._last_seq(),
            open_timeout=self.settings.open_timeout,
            connect_options=self.settings.websocket_options(),
            on_early_frame=self._deliver,
            logger=self._logger,
        )
        self._tokens.sync(connected.data.server_time, self._clock())
        self._tokens.accept(token, self._clock())
        self._info = connected.data
        return ws, connected, rest

    async def _serve(
        self, ws: ClientConnection, connected: ConnectedFrame, rest: list[Frame]
    ) -> tuple[int, str]:
        """Run one authenticated socket until it ends; return its close code and reason."""
        socket = Socket(
            ws,
            on_frame=self._handle,
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            limiter=self._limiter,
            logger=self._logger,
        )
        self._socket = socket
        self._state = State.CONNECTED
        try:
            self._on_open()  # connection-scoped requests (re-join, re-subscribe) go first
        except Exception:
            self._logger.exception("on-open hook failed")
        self._requests.resend_all()
        self._settled.set()
        self._handle(connected)
        for frame in rest:  # what arrived in the same message as `connected`
            self._handle(frame)
        refresher = asyncio.create_task(self._refresh_loop())
        try:
            return await socket.run()
        finally:
            self._state = State.CONNECTING
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            self._socket = None
            if self._closing:
                await socket.close()
            else:
                socket.abort()
            self._settled.clear()
            self._requests.fail_scoped(Disconnected("connection lost"))
            self._on_disconnect()

    async def _refresh_loop(self) -> None:
        """Send ``refresh`` before the token expires (else the server closes with 4401)."""
        while (delay := self._tokens.refresh_in(self._clock())) is not None:
            await asyncio.sleep(delay)
            try:
                token = await self._fetch_token()
                if self._tokens.is_fresher(token):
                    await self._request(RefreshRequest(token=token), scoped=True, counted=False)
                    self._tokens.accept(token, self._clock())
                    continue
                self._logger.warning("token provider returned no fresher token")
            except Disconnected:
                return
            except Exception as exc:
                self._logger.warning("token refresh failed: %r", exc)
            await asyncio.sleep(self._tokens.retry_in(self._clock()))

    async def _fetch_token(self) -> str:
        token = self._token_provider()
        if not isinstance(token, str):
            token = await token
        return token

    def _finish(self, error: ConnectionClosed | None) -> None:
        """End the client for good: fail waiting requests, stop tasks, end iteration."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        self._terminal = error
        self._requests.fail_all(error or ConnectionClosed(1000, "client closed"))
        self._tasks.cancel_all()
        self._inbox.close(error if error is not None and error.code != 1000 else None)
        self._settled.set()
        self._closed.set()
        if error is not None and error.code != 1000:
            self._logger.warning("client ended: %s", error)
