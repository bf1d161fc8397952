"""Commands over NATS: a durable pull consumer on the work-queue stream, pulled continuously.

nats-py's ``fetch`` asks anew for every batch: a no-wait probe, its "no messages" answer and a
lingering request, each a round trip through the server and a future and timer in the client.
A partition of a busy stack gets a few commands at a time, so that was most of the cost of
taking one command and left it waiting for the next request. Here, as the official clients'
``consume`` does, pull requests stay open at the server with credit: what is buffered plus what
is asked for never exceeds ``WINDOW``, and a request is topped up when half of it is used, so a
command is delivered the moment it is stored.

The queue heals itself: a consumer the server lost (a NATS restart, a memory stream gone), a
409 from the server, or silence longer than three heartbeats while asking re-creates the
consumer (and, if need be, the stream) and asks again. Closing the queue gives back the
commands it holds but has not handed out, so the next owner of the partition gets them at once
instead of after the ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, Header

from shared import subjects
from shared.bus.port import Command
from shared.bus.pull import Credit, Requests
from shared.logs import get_logger

if TYPE_CHECKING:
    from shared.bus.nats import NatsBus

__all__ = ["CommandQueue"]

log = get_logger(__name__)

_BROKEN = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)


class _Command:
    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @property
    def data(self) -> bytes:
        return self._msg.data

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float = 0.0) -> None:
        await self._msg.nak(delay=delay or None)

    async def term(self) -> None:
        await self._msg.term()


class CommandQueue:
    """A durable pull consumer of ``subjects_`` (``Bus.commands`` over NATS)."""

    # up to 512 commands buffered or asked for; a request lives 10 s when the partition is quiet
    CREDIT = Credit(window=512, chunk=256, expires_s=10.0, heartbeat_s=1.0)

    def __init__(self, bus: NatsBus, subjects_: str, durable: str) -> None:
        self.bus = bus
        self.subjects = subjects_
        self.durable = durable
        self.stream = subjects.command_stream(subjects_)
        self.config = ConsumerConfig(
            durable_name=durable,
            filter_subject=subjects_,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_ack_pending=4096,
        )
        self._sub: Subscription | None = None
        self._inbox = ""
        self._buffer: deque[Msg] = deque()
        self._ready = asyncio.Event()
        self._asked = Requests(self.CREDIT)
        self._heard = 0.0  # when the server last sent anything on this queue
        self._broken = False
        self._generation = 0  # which subscription is the current one

    # --- the consumer --------------------------------------------------------------------
    async def _open(self) -> None:
        if self._sub is not None and not self._broken:
            return
        await self._drop()
        try:
            await self.bus.js.add_consumer(self.stream, self.config)
        except nats.js.errors.NotFoundError:  # the stream itself is gone (memory, restart)
            await self.bus.restore_streams()
            await self.bus.js.add_consumer(self.stream, self.config)
        self._inbox = self.bus.nc.new_inbox()
        self._generation += 1
        generation = self._generation

        async def take(msg: Msg) -> None:
            await self._take(msg, generation == self._generation)

        self._sub = await self.bus.nc.subscribe(self._inbox, cb=take)
        self._broken = False
        self._heard = asyncio.get_running_loop().time()
        await self._pull()

    async def _drop(self) -> None:
        """Stop listening; what the old requests still deliver goes nowhere and comes back
        after the ack wait, what is buffered is handed out as usual."""
        sub, self._sub = self._sub, None
        self._asked.clear()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _pull(self) -> None:
        """Ask for more while what is buffered and asked for stays within the credit window."""
        if self._sub is None or self._broken:
            return
        api = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        for request in self._asked.top_up(len(self._buffer)):
            await self.bus.nc.publish(api, request, reply=self._inbox)

    async def _take(self, msg: Msg, latest: bool) -> None:
        current = latest and not self._broken
        if msg.reply:  # a command: hand it out, whichever request brought it
            self._buffer.append(msg)
            self._ready.set()
            if current:
                self._asked.served(1)
        if not current:
            return  # a status for a request being replaced
        self._heard = asyncio.get_running_loop().time()
        if msg.reply:
            return
        status = (msg.headers or {}).get(Header.STATUS, "")
        if self._asked.status(status):
            await self._pull()  # a request may have expired
            return
        log.warning(
            "command consumer interrupted; re-creating",
            extra={"status": status, "durable": self.durable},
        )
        self._broken = True
        self._ready.set()  # wake the reader: it re-creates the consumer

    # --- the reader's side ---------------------------------------------------------------
    async def fetch(self, batch: int, timeout: float) -> list[Command]:
        """Up to ``batch`` commands, waiting up to ``timeout`` for the first."""
        try:
            await self._open()
        except _BROKEN as exc:
            log.warning("command consumer not re-created yet", extra={"error": repr(exc)})
            self._broken = True
            await asyncio.sleep(0.5)  # back off while NATS settles
            return []
        if not self._buffer:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        if not self._buffer:
            quiet = asyncio.get_running_loop().time() - self._heard > 3 * self.CREDIT.heartbeat_s
            if quiet and self._asked:  # asking, yet not even a heartbeat: the request is lost
                log.warning("command consumer silent; re-creating", extra={"d": self.durable})
                self._broken = True
            return []
        n = min(batch, len(self._buffer))
        out: list[Command] = [_Command(self._buffer.popleft()) for _ in range(n)]
        with contextlib.suppress(*_BROKEN):
            await self._pull()
        return out

    async def pending(self) -> int:
        try:
            info = await self.bus.js.consumer_info(self.stream, self.durable)
        except _BROKEN:
            return len(self._buffer)
        return int(info.num_pending or 0) + len(self._buffer)

    async def close(self) -> None:
        """Stop asking and give back what was taken but not handed out (the next owner gets
        it at once)."""
        await self._drop()
        held, self._buffer = list(self._buffer), deque()
        for msg in held:
            with contextlib.suppress(Exception):
                await msg.nak()
