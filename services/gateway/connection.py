"""One WebSocket connection's outbound side: a bounded queue, ordered replies, one writer.

Replies to client frames go out in the order the frames arrived even when their backends answer
out of order: each frame reserves a slot (a future) in ``replies`` and a pump releases them in
sequence. Broadcasts go straight to the outbound queue. Overflow policy: droppable frames
(typing, cursor) are dropped when the queue is full; anything else closes the socket as a slow
consumer (1013), because silently losing chat messages is worse.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from shared.auth import Identity
from shared.errors import CLOSE_TRY_AGAIN
from shared.logs import get_logger
from shared.schemas.commands import Connection

__all__ = ["Conn"]

log = get_logger(__name__)
_CLOSE = object()
Followed = tuple[str | None, Callable[[], None]]  # a reply and what must happen right after it


class Conn:
    def __init__(
        self,
        endpoint: str,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        max_queue: int,
        peer: str,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.endpoint = endpoint
        self.peer = peer
        self.identity: Identity | None = None
        self.context_id: str | None = None
        self.closed = False
        self.close_code: int | None = None
        self._send = send
        self._out: asyncio.Queue[Any] = asyncio.Queue(max_queue)
        self._replies: asyncio.Queue[
            tuple[asyncio.Future[str | None | Followed], Callable[[], None] | None]
        ] = asyncio.Queue(256)
        self._held: list[tuple[str, int | None]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.on_sent: Callable[[], None] | None = None
        self.joined = False  # the endpoint finished its on_open
        self.present = False  # announced to presence (chat), so heartbeats list it

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity else None

    def ref(self) -> Connection:
        """This authenticated socket as presence bookkeeping names it."""
        assert self.identity is not None and self.context_id is not None
        return Connection(self.context_id, self.id, self.identity.user_id, self.identity.name)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"conn-writer-{self.id}"),
            asyncio.create_task(self._pump(), name=f"conn-replies-{self.id}"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._replies.empty():  # replies nobody will send: stop their work too
            fut, _ = self._replies.get_nowait()
            fut.cancel()

    # --- outbound -------------------------------------------------------------------------
    def push(self, text: str, droppable: bool = False, seq: int | None = None) -> None:
        if self.closed:
            return
        if self._held is not None:
            if len(self._held) >= self._out.maxsize:
                if not droppable:
                    self.close(CLOSE_TRY_AGAIN, "slow consumer")  # held as long as a full queue
                return
            self._held.append((text, seq))
            return
        try:
            self._out.put_nowait(text)
        except asyncio.QueueFull:
            if droppable:
                return
            log.warning("slow consumer closed", extra={"connectionId": self.id})
            self.close(CLOSE_TRY_AGAIN, "slow consumer")

    def hold(self) -> None:
        """Buffer broadcasts (while connected/presence/recovery go out first)."""
        self._held = []

    def release(self, after_seq: int | None = None) -> None:
        held, self._held = self._held or [], None
        for text, seq in held:
            if after_seq is not None and seq is not None and seq <= after_seq:
                continue  # already replayed
            self.push(text, seq=seq)

    async def reply(
        self,
        result: Awaitable[str | None | Followed] | str | None,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Reserve the next reply slot; waits (backpressure) while 256 replies are in flight.

        ``then`` runs right after this reply is queued for sending, in order with the others; an
        awaitable may instead resolve to ``(text, then)`` when the follow-up is known only then.
        """
        if isinstance(result, str) or result is None:
            fut: asyncio.Future[str | None | Followed] = asyncio.get_running_loop().create_future()
            fut.set_result(result)
        else:
            fut = asyncio.ensure_future(result)
        await self._replies.put((fut, then))

    def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        # RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
        reason = reason.encode("utf-8", "ignore")[:123].decode("utf-8", "ignore")
        # Jump the queue only if it is full; otherwise close after what is queued is sent.
        while True:
            try:
                self._out.put_nowait((_CLOSE, code, reason))
                return
            except asyncio.QueueFull:
                self._out.get_nowait()
                self._out.task_done()

    async def flushed(self) -> None:
        await self._out.join()

    async def _pump(self) -> None:
        while True:
            fut, then = await self._replies.get()
            try:
                result = await fut
                if isinstance(result, tuple):  # (frame, follow-up): the follow-up runs in order
                    text, then = result[0], result[1] if then is None else then
                else:
                    text = result
            except Exception:
                log.exception("reply failed", extra={"connectionId": self.id})
                text = None
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for can swallow a cancel that lands as its future completes;
                # honour it here or stop() would wait for this loop forever.
                raise asyncio.CancelledError
            if text is not None and not self.closed:
                try:
                    self._out.put_nowait(text)
                except asyncio.QueueFull:
                    self.close(CLOSE_TRY_AGAIN, "slow consumer")
            if then is not None:
                then()

    async def _writer(self) -> None:
        while True:
            item = await self._out.get()
            try:
                if isinstance(item, tuple):
                    _, code, reason = item
                    await self._send({"type": "websocket.close", "code": code, "reason": reason})
                    return
                await self._send({"type": "websocket.send", "text": item})
                if self.on_sent:
                    self.on_sent()
            except Exception:  # the peer went away; the reader sees the disconnect
                self.closed = True
                return
            finally:
                self._out.task_done()
