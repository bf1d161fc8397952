"""The fast way out: pre-built WebSocket frames written straight to a socket's transport.

A server frame is never masked, so a broadcast's frame is the same bytes for every socket: it is
built once (``FrameCache``) and written to each transport, instead of each socket's writer task
taking the text from its queue and uvicorn and ``websockets`` framing it again. Frames for one
socket that are ready within a few event-loop turns (up to CORK_MAX_S while flushes keep the
loop busy) leave in one write (``Flusher``): under load a busy room costs one system call per
socket per flush, not per frame.

``OutletProtocol`` is uvicorn's sans-I/O ``websockets`` protocol with one ASGI extension,
``atomic-guide.outlet`` in the WebSocket scope: the protocol object itself, which says whether a
raw write may be made now (handshake done, no close sent or received, the transport not paused
by flow control, no compression negotiated) and makes it. Anything else (a paused transport,
closing, a server without the extension) takes the ordinary ASGI ``send`` path, in order.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import Protocol as WebSocketsProtocol
from websockets.protocol import State

from services.gateway.expiry import Expiries, Filed
from shared.logs import get_logger

__all__ = [
    "EXTENSION",
    "FrameCache",
    "Flusher",
    "Outlet",
    "OutletProtocol",
    "outlet_of",
    "text_frame",
]

EXTENSION = "atomic-guide.outlet"
log = get_logger(__name__)


class Outlet(Protocol):
    def can_write(self) -> bool: ...
    def write(self, data: bytes) -> None: ...


class _Waiters:
    """Futures parked until woken. Nearly always one waits (the socket's reader), so one is
    kept as itself and only a second makes a list."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: asyncio.Future[None] | list[asyncio.Future[None]] | None = None

    async def park(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._futures
        if waiting is None:
            self._futures = fut
        elif isinstance(waiting, list):
            waiting.append(fut)
        else:
            self._futures = [waiting, fut]
        try:
            await fut
        finally:  # woken or cancelled (a reader that gives up): gone either way
            waiting = self._futures
            if waiting is fut:
                self._futures = None
            elif isinstance(waiting, list):
                if fut in waiting:
                    waiting.remove(fut)
                if not waiting:
                    self._futures = None

    def wake(self, *, everyone: bool) -> None:
        waiting = self._futures
        if waiting is None:
            return
        for fut in list(waiting) if isinstance(waiting, list) else (waiting,):
            if not fut.done():
                fut.set_result(None)
                if not everyone:
                    return


class _LeanQueue:
    """What uvicorn's protocol needs of its receive queue (``put_nowait``, ``get``, ``empty``),
    without asyncio.Queue's three deques and Event: an idle socket holds an empty one."""

    __slots__ = ("_items", "_getters")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters = _Waiters()

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._getters.wake(everyone=False)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            await self._getters.park()
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item


class _LeanEvent:
    """asyncio.Event's set, clear, is_set and wait, with no waiter list until one waits."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters = _Waiters()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        self._waiters.wake(everyone=True)

    def clear(self) -> None:
        self._flag = False

    async def wait(self) -> bool:
        while not self._flag:
            await self._waiters.park()
        return True


_PINGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Expiries[OutletProtocol]]
_PINGS = weakref.WeakKeyDictionary()


def _pings(loop: asyncio.AbstractEventLoop) -> Expiries[OutletProtocol]:
    """The keepalive pings of every socket on this loop, under one timer."""
    found = _PINGS.get(loop)
    if found is None:
        # time.monotonic is the loop's clock; the loop's own bound method would keep the loop
        # (the weak key) alive through its value.
        found = _PINGS[loop] = Expiries(_ping, clock=time.monotonic)
    return found


def _ping(protocol: OutletProtocol) -> None:
    protocol.send_keepalive_ping()


class OutletProtocol(WebSocketsSansIOProtocol):
    # uvicorn's protocol sets 37 attributes. Over 30, CPython gives each instance a dict of its
    # own (1.6 KB) instead of values under keys shared by every instance; as slots they take
    # 8 bytes each (~1.3 KB less per socket). A name uvicorn drops costs 8 bytes; one it adds
    # lands in the dict, and the unit test that counts the dict fails.
    __slots__ = (
        "config", "app", "loop", "logger", "root_path", "asgi_version", "app_state",
        "connections", "tasks", "default_headers", "transport", "server", "client", "scheme",
        "queue", "handshake_initiated", "handshake_complete", "close_sent", "disconnected",
        "close_timer", "close_timeout", "initial_response", "conn", "read_paused", "writable",
        "ping_interval", "ping_timeout", "ping_timer", "pong_timer", "pending_ping_payload",
        "ping_sent_at", "last_ping_rtt", "frames", "curr_msg_data_type", "request", "response",
        "scope",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lighter stand-ins for the receive queue and the flow-control event (~4 KB of every
        # connection with asyncio's own; uvicorn uses only the methods they have).
        self.queue = _LeanQueue()  # type: ignore[assignment]
        self.writable = _LeanEvent()  # type: ignore[assignment]
        self.writable.set()

    def schedule_ping(self) -> None:
        # uvicorn's own is a loop timer per socket (~0.5 KB each); the shared wheel pings up to
        # a second late, which a keepalive does not mind.
        assert self.ping_interval is not None
        pings = _pings(self.loop)
        pings.set(self, pings.clock() + max(0.0, self.ping_interval - self.last_ping_rtt))
        self.ping_timer = Filed(pings, self)  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        # uvicorn calls this right after the 101 response is written: the handshake is over.
        super().start_keepalive()
        self._release_handshake()

    def _release_handshake(self) -> None:
        """Let go of the handshake: uvicorn keeps its request and response, and the parser's
        generator frame keeps the request, for the socket's whole life (~3 KB of headers and the
        token-bearing path on every idle connection)."""
        request: Request | None = getattr(self, "request", None)
        if request is not None:
            request.headers.clear()
            request.path = ""
        self.request = self.response = None  # type: ignore[assignment]
        # Read only while the handshake is judged (origin, client IP, route): ~0.8 KB a socket.
        # Empty tuples are shared, where every empty list would be one more object a socket.
        self.scope["headers"] = ()  # type: ignore[typeddict-item]
        self.scope["subprotocols"] = ()  # type: ignore[typeddict-item]

    def adopt(
        self,
        transport: asyncio.Transport,
        server: tuple[str, int | None] | None,
        client: tuple[str, int] | None,
        http_scheme: str | None,
    ) -> None:
        """``connection_made`` for a socket the HTTP protocol upgrades: the addresses it already
        asked the socket for (uvicorn's own would make both system calls again)."""
        self.connections.add(self)
        self.transport = transport
        self.server = server
        self.client = client
        self.scheme = "wss" if http_scheme == "https" else "ws"

    def upgrade(self, request: Request) -> None:
        """The handshake, already parsed (``upgrade.py``), judged and answered as uvicorn's
        ``data_received`` would once ``websockets`` had parsed it."""
        conn = self.conn
        # websockets' parser waits for the request first; it is here, so read frames next.
        conn.parser = WebSocketsProtocol.parse(conn)
        next(conn.parser)
        self.handle_connect(request)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    def can_write(self) -> bool:
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and self.writable.is_set()
            and self.conn.state is State.OPEN
            and not self.conn.extensions  # compressed sockets take the ASGI path
        )

    def write(self, data: bytes) -> None:
        self.transport.write(data)


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class FrameCache:
    """Frames built once per loop turn: a broadcast offers the same text object to every socket,
    so it is keyed by identity (the text is kept alive alongside, so an id is never reused)."""

    __slots__ = ("_single", "_batches")

    def __init__(self) -> None:
        self._single: dict[int, tuple[str, bytes]] = {}
        self._batches: dict[tuple[int, ...], tuple[list[str], bytes]] = {}

    def frame(self, text: str) -> bytes:
        hit = self._single.get(id(text))
        if hit is None:
            hit = self._single[id(text)] = (text, text_frame(text.encode()))
        return hit[1]

    def frames(self, texts: list[str]) -> bytes:
        """Each text its own WebSocket message, written together."""
        if len(texts) == 1:
            return self.frame(texts[0])
        return b"".join([self.frame(t) for t in texts])

    def batch(self, texts: list[str]) -> bytes:
        """The texts as one message, a JSON array in order (``batch=1`` sockets)."""
        if len(texts) == 1:
            return self.frame(texts[0])
        key = tuple(map(id, texts))
        hit = self._batches.get(key)
        if hit is None:
            hit = self._batches[key] = (texts, text_frame(f"[{','.join(texts)}]".encode()))
        return hit[1]

    def clear(self) -> None:
        self._single.clear()
        self._batches.clear()


class _Flushable(Protocol):
    def flush(self, cache: FrameCache) -> int:
        """Write what waits; how many frames that was."""
        ...


# Loop turns a flush waits after the first frame is marked. A burst (sockets joining a room,
# messages read from NATS in successive chunks) spreads over a few turns; waiting for them
# puts its frames in one write per socket. Set-up of 5,000 sockets in rooms of 100: 1,018-1,096
# connections per gateway CPU-second with 2, against 826-882 with none. An idle loop's turn is
# microseconds, so a lone frame is not held back noticeably.
FLUSH_TURNS = 2

# Corking: while flushes take most of the loop's time (a large room under a stream of messages:
# one system call per socket per flush), the next flush waits about as long as the last one
# took, up to CORK_MAX_S, so the messages that arrive meanwhile share its writes. It starts when
# a flush took CORK_ON of the time since the one before ended, and lasts while the waits pay:
# a corked flush that wrote one frame a socket (nothing arrived to share it) ends it. A flush
# under CORK_MIN_S (a hundred sockets or so) never makes the next one wait, nor does a message
# after a quiet spell: a lone message, or a small room, goes out as before.
CORK_ON = 0.5
CORK_MIN_S = 0.001
CORK_MAX_S = 0.010


class Flusher:
    """Collects the sockets with frames waiting and writes them all once per flush, a few loop
    turns after the first frame, or a few ms while corked (one per gateway: its sockets share
    one event loop).

    Frames that may wait (``lazy``: presence, typing, cursors) are written ``lazy_s`` after the
    first of them, or with the socket's next frame that may not, whichever comes first, in
    order. Sockets joining a room of 100 send each member a ``user_joined``: flushed a few turns
    apart, that was one write per member per join; waiting 20 ms lets a burst of joins share
    one (5,000 sockets set up in rooms of 100: ~1,050 per gateway CPU-second against ~870).
    """

    def __init__(self, lazy_s: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self._dirty: list[_Flushable] = []
        self._lazy: list[_Flushable] = []
        self._lazy_s = lazy_s
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._cache = FrameCache()
        self._scheduled = False
        self._cork_s = 0.0  # how long the next flush waits (0: FLUSH_TURNS turns)
        self._last_end = float("-inf")
        self._clock = clock
        # Kept: asyncio.get_running_loop() costs a getpid() system call each time.
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def mark(self, conn: _Flushable) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            # Corked only while the last flush is recent: the first message after a quiet
            # spell finds the loop idle and goes at once.
            if self._cork_s and self._clock() - self._last_end < 2 * CORK_MAX_S:
                self._running_loop().call_later(self._cork_s, self._linger, 0)
            else:
                self._running_loop().call_soon(self._linger, FLUSH_TURNS)

    def mark_lazy(self, conn: _Flushable) -> None:
        """``conn``'s waiting frames may all wait up to ``lazy_s``."""
        if self._lazy_s <= 0:
            self.mark(conn)
            return
        self._lazy.append(conn)
        if self._lazy_timer is None:
            self._lazy_timer = self._running_loop().call_later(self._lazy_s, self._flush_lazy)

    def _linger(self, turns: int) -> None:
        if turns:
            assert self._loop is not None
            self._loop.call_soon(self._linger, turns - 1)
        else:
            self._scheduled = False
            dirty, self._dirty = self._dirty, []
            start = self._clock()
            frames = self._flush(dirty)
            self._corked(start, self._clock(), frames > len(dirty))

    def _corked(self, start: float, end: float, shared: bool) -> None:
        """``shared``: the flush wrote more than one frame a socket."""
        took, since = end - start, end - self._last_end
        self._last_end = end
        if self._cork_s:
            cork = shared and took >= CORK_MIN_S
        else:
            cork = took >= CORK_MIN_S and took >= CORK_ON * since
        self._cork_s = min(took, CORK_MAX_S) if cork else 0.0

    def _flush_lazy(self) -> None:
        self._lazy_timer = None
        lazy, self._lazy = self._lazy, []
        self._flush(lazy)  # a socket flushed since has nothing left: a no-op for it

    def _flush(self, conns: list[_Flushable]) -> int:
        """Every socket's frames (one that fails is logged and leaves the others unharmed);
        how many frames were written."""
        cache, frames = self._cache, 0
        for conn in conns:
            try:
                frames += conn.flush(cache)
            except Exception:
                log.exception("flush failed")
        cache.clear()
        return frames


def outlet_of(scope: Mapping[str, Any]) -> Outlet | None:
    ext = scope.get("extensions") or {}
    found = ext.get(EXTENSION)
    return found if found is not None and hasattr(found, "can_write") else None
