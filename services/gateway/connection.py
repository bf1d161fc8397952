"""One WebSocket connection: its lifecycle, and its outbound side (bounded queue, ordered replies).

Lifecycle (``ConnState``): ``AUTHENTICATING`` until a token is accepted (``open`` returns the
``Authed`` view endpoints work with, so no endpoint code ever sees a connection without an
identity), ``OPEN``, then ``CLOSING`` once a close is queued (frames still in the queue go out
first) and ``CLOSED`` when the socket is gone. An illegal transition raises ``StateError``.

Outbound: replies to client frames go out in the order the frames arrived even when their
backends answer out of order: each frame reserves a slot in ``replies`` and a pump releases them
in sequence. Live frames are emitted at once. While the socket keeps up (nothing queued, its
transport not paused), emitted frames wait only for the end of the loop turn and leave as
pre-built bytes in one write (``services/gateway/outlet.py``); otherwise they go through the
bounded outbound queue and a writer task, in order. Overflow policy, the same on both paths:
droppable frames (typing, cursor) are dropped when the queue is full; anything else closes the
socket as a slow consumer (1013), because silently losing chat messages is worse.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.gateway.outlet import Flusher, FrameCache, Outlet
from shared import tasks
from shared.auth import Identity
from shared.errors import CLOSE_TRY_AGAIN
from shared.logs import get_logger
from shared.schemas.commands import Connection

__all__ = ["Authed", "Conn", "ConnState", "Reply", "StateError"]

log = get_logger(__name__)
_CLOSE = object()
REPLY_SLOTS = 256  # replies in flight per socket before reading its next frame waits
LAZY_MAX = 64  # frames that may wait: this many waiting are flushed at once (one write's worth)


@dataclass(frozen=True, slots=True)
class Reply:
    """A frame's reply: the text to send (None: nothing), and what must happen right after it
    is queued, before any later reply (releasing a ``HoldGate``, closing the socket)."""

    text: str | None = None
    then: Callable[[], None] | None = None


ReplyLike = Reply | str | None


class ConnState(enum.Enum):
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class StateError(RuntimeError):
    """A transition the lifecycle does not have."""


class Conn:
    def __init__(
        self,
        endpoint: str,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        max_queue: int,
        peer: str,
        outlet: Outlet | None = None,
        flusher: Flusher | None = None,
        batch: bool = False,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.endpoint = endpoint
        self.peer = peer
        # A plain attribute, kept by the ``state`` setter: every frame out reads it.
        self.closed = False
        self._state = ConnState.AUTHENTICATING
        self.authed: Authed | None = None
        self.close_code: int | None = None
        self.on_sent: Callable[[int], object] | None = None
        self.batch = batch  # several frames may share one WebSocket message (a JSON array)
        self._send = send
        # Both or neither: the outlet writes, the flusher says when.
        self._outlet = outlet if flusher is not None else None
        self._flusher = flusher
        self._max_queue = max_queue
        # Frames that may wait stop waiting here, leaving room in the queue for what comes
        # before the flush (a small AG_OUTBOUND_QUEUE must not close a healthy socket).
        self._lazy_max = max(1, min(LAZY_MAX, max_queue // 2))
        self._pending: list[str] = []  # emitted this loop turn, for the outlet
        self._urgent = False  # _pending holds a frame that may not wait (marked for a flush)
        self._busy = False  # the writer task holds a frame it has not finished sending
        # Plain deques, made when needed and dropped when empty: most sockets keep up, and an
        # idle one should cost little (three asyncio.Queues were ~7 KB of every connection).
        self._out: deque[Any] | None = None  # the queue path, while this socket is behind
        self._replies: deque[tuple[asyncio.Future[ReplyLike], Callable[[], None] | None]] | None
        self._replies = None
        self._room: asyncio.Future[None] | None = None  # a reply() waiting for a free slot
        self._drained: asyncio.Future[None] | None = None  # flushed() waiting for the writer
        # Started when there is work and ended when it is done: an idle socket holds no task.
        self._writer_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._started = False

    @property
    def state(self) -> ConnState:
        return self._state

    @state.setter
    def state(self, state: ConnState) -> None:
        self._state = state
        self.closed = state is ConnState.CLOSING or state is ConnState.CLOSED

    @property
    def user_id(self) -> str | None:
        return self.authed.user_id if self.authed else None

    @property
    def context_id(self) -> str | None:
        return self.authed.context_id if self.authed else None

    # --- lifecycle ------------------------------------------------------------------------
    def open(self, identity: Identity, context_id: str) -> Authed:
        if self.state is not ConnState.AUTHENTICATING:
            raise StateError(f"cannot authenticate a connection that is {self.state.value}")
        self.state = ConnState.OPEN
        self.authed = Authed(self, identity, context_id)
        return self.authed

    def start(self) -> None:
        self._started = True
        self._wake_writer()
        self._wake_pump()

    def _wake_writer(self) -> None:
        task = self._writer_task
        if self._started and self._out and (task is None or task.done()):
            if self.state is not ConnState.CLOSED:
                self._writer_task = asyncio.create_task(self._writer(), name="conn-writer")

    def _wake_pump(self) -> None:
        task = self._pump_task
        if self._started and self._replies and (task is None or task.done()):
            if self.state is not ConnState.CLOSED:
                self._pump_task = asyncio.create_task(self._pump(), name="conn-replies")

    async def stop(self) -> None:
        self.state = ConnState.CLOSED
        await tasks.stop([self._writer_task, self._pump_task])
        for fut, _ in self._replies or ():  # replies nobody will send: stop their work too
            fut.cancel()
        self._replies = None
        for waiter in (self._room, self._drained):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # --- outbound -------------------------------------------------------------------------
    def push(self, text: str, droppable: bool = False, lazy: bool = False) -> None:
        """``lazy``: the frame may wait a little to share a write (``Flusher``)."""
        if not self.closed:
            self._emit(text, droppable, lazy)

    def _emit(self, text: str, droppable: bool, lazy: bool = False) -> None:
        pending = self._pending
        outlet = self._outlet
        if pending or (
            outlet is not None and not self._busy and not self._out and outlet.can_write()
        ):
            if len(pending) < self._max_queue:
                pending.append(text)
                flusher = self._flusher
                if flusher is not None and not self._urgent:
                    if not lazy or len(pending) >= self._lazy_max:
                        self._urgent = True
                        flusher.mark(self)
                    elif len(pending) == 1:
                        flusher.mark_lazy(self)
            elif not droppable:
                self.slow_consumer()
            return
        out = self._out
        if out is None:
            out = self._out = deque()
        if len(out) >= self._max_queue:
            if not droppable:
                self.slow_consumer()
            return
        out.append(text)
        self._wake_writer()

    def slow_consumer(self) -> None:
        log.warning("slow consumer closed", extra={"connectionId": self.id})
        self.close(CLOSE_TRY_AGAIN, "slow consumer")

    def flush(self, cache: FrameCache) -> int:
        """Write what was emitted since the last flush (the ``Flusher`` calls this a few loop
        turns, or while corked a few ms, after the first); how many frames left in the write."""
        self._urgent = False
        texts = self._pending
        if not texts:
            return 0
        self._pending = []
        if self.state is ConnState.CLOSED:
            return 0
        outlet = self._outlet
        if outlet is not None and outlet.can_write():
            outlet.write(cache.batch(texts) if self.batch else cache.frames(texts))
            if self.on_sent:
                self.on_sent(len(texts))
            return len(texts)
        for text in texts:  # paused meanwhile: the queue takes them, in order (it is empty)
            self._emit(text, False)
        return 0

    async def reply(
        self, result: Awaitable[ReplyLike] | ReplyLike, then: Callable[[], None] | None = None
    ) -> None:
        """Reserve the next reply slot; waits (backpressure) while 256 replies are in flight.

        ``then`` runs right after this reply is queued for sending, in order with the others; an
        awaitable may instead resolve to a ``Reply`` whose ``then`` is known only then.
        """
        if result is None or isinstance(result, str | Reply):
            pump = self._pump_task
            if self._started and not self._replies and (pump is None or pump.done()):
                # Nothing before it in flight: out now, without a future and a pump task.
                if self.state is not ConnState.CLOSED:
                    self._release(result, then)
                return
            fut: asyncio.Future[ReplyLike] = asyncio.get_running_loop().create_future()
            fut.set_result(result)
        else:
            fut = asyncio.ensure_future(result)
        while self._replies is not None and len(self._replies) >= REPLY_SLOTS:
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await self._room
        if self.state is ConnState.CLOSED:
            fut.cancel()
            return
        if self._replies is None:
            self._replies = deque()
        self._replies.append((fut, then))
        self._wake_pump()

    def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.state = ConnState.CLOSING
        self.close_code = code
        # RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
        reason = reason.encode("utf-8", "ignore")[:123].decode("utf-8", "ignore")
        # What waits for the outlet goes first, through the queue, then the close.
        pending, self._pending = self._pending, []
        self._urgent = False
        out = self._out
        if out is None:
            out = self._out = deque()
        out.extend(pending[: max(self._max_queue - len(out), 0)])
        # Jump the queue only if it is full; otherwise close after what is queued is sent.
        while len(out) >= self._max_queue:
            out.popleft()
        out.append((_CLOSE, code, reason))
        self._wake_writer()

    async def flushed(self) -> None:
        """Wait until the writer has sent what is queued (the outlet's frames go with the
        ``Flusher``'s next flush)."""
        while self._writer_task is not None and not self._writer_task.done():
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    async def _pump(self) -> None:
        replies = self._replies
        me = asyncio.current_task()
        while replies:
            fut, then = replies.popleft()
            if self._room is not None and not self._room.done():
                self._room.set_result(None)
            try:
                result = await fut
            except Exception:
                log.exception("reply failed", extra={"connectionId": self.id})
                result = None
            if me is not None and me.cancelling():
                # Python 3.11's wait_for can swallow a cancel that lands as its future completes;
                # honour it here or stop() would wait for this loop forever.
                raise asyncio.CancelledError
            self._release(result, then)
        if self._replies is replies:
            self._replies = None
        if self._pump_task is me:
            self._pump_task = None  # a done task is ~0.3 KB that an idle socket need not keep

    def _release(self, result: ReplyLike, then: Callable[[], None] | None) -> None:
        """A reply whose turn has come: its text out, then what must follow it."""
        if isinstance(result, Reply):
            text, then = result.text, then or result.then
        else:
            text = result
        if text is not None and not self.closed:
            self._emit(text, False)
        if then is not None:
            then()

    async def _writer(self) -> None:
        out = self._out
        try:
            while out:
                item = out.popleft()
                self._busy = True
                try:
                    if isinstance(item, tuple):
                        _, code, reason = item
                        await self._send(
                            {"type": "websocket.close", "code": code, "reason": reason}
                        )
                        return
                    await self._send({"type": "websocket.send", "text": item})
                    if self.on_sent:
                        self.on_sent(1)
                except Exception:  # the peer went away; the reader sees the disconnect
                    self.state = ConnState.CLOSED
                    return
                finally:
                    self._busy = False
        finally:
            if self._out is out and not out:
                self._out = None
            if self._writer_task is asyncio.current_task():
                self._writer_task = None
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)


@dataclass(eq=False, slots=True)
class Authed:
    """An authenticated connection: what endpoints work with (identity and context certain)."""

    conn: Conn
    identity: Identity
    context_id: str

    @property
    def id(self) -> str:
        return self.conn.id

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def user_name(self) -> str:
        return self.identity.name

    def push(self, text: str, droppable: bool = False, lazy: bool = False) -> None:
        self.conn.push(text, droppable, lazy)

    async def reply(
        self, result: Awaitable[ReplyLike] | ReplyLike, then: Callable[[], None] | None = None
    ) -> None:
        await self.conn.reply(result, then)

    def close(self, code: int, reason: str = "") -> None:
        self.conn.close(code, reason)

    def slow_consumer(self) -> None:
        """Close as too slow (1013): what a member's full ``HoldGate`` calls. A method of this
        object, not of the member, so the gate does not refer back to its member (a cycle
        would keep a closed socket's objects until a full collection)."""
        self.conn.slow_consumer()

    def ref(self) -> Connection:
        """This socket as presence bookkeeping names it."""
        return Connection(self.context_id, self.conn.id, self.user_id, self.user_name)
