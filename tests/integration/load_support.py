"""Chat load for fault tests: senders that never give up on a message, receivers that check order.

Senders send messages with ids at a steady rate; an ``unavailable`` error or a lost connection
makes them re-send the same id (after reconnecting) until it is acknowledged, as a client is
told to. Receivers reconnect with ``lastSeq`` whenever their socket closes, and check that the
``message`` frames they get, over all their connections, are exactly 1, 2, 3, ... in order.
Everything is raw WebSocket frames: no client library smooths over what the server sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from atomic_guide_client import CollaborationClient
from websockets.asyncio.client import ClientConnection

from tests.conftest import T
from tests.integration.sdk_support import opts, tokens

__all__ = ["ChatLoad", "Editors", "Receiver", "Sender"]

Url = Callable[[str, int | None], str]  # (user, lastSeq) -> WebSocket URL


async def _connect(url: str, stop: asyncio.Event) -> ClientConnection | None:
    """Connect, retrying quickly while the gateway is away (as a client's backoff would)."""
    while not stop.is_set():
        try:
            ws = await websockets.connect(url, open_timeout=T(5), max_size=2**24)
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            await asyncio.sleep(0.1)  # retry backoff
            continue
        return ws
    return None


class Progress:
    """Set on every message received or acknowledged: waits wake on it, never on a sleep."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def tick(self) -> None:
        self._event.set()

    async def until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(T(timeout)):
                while not check():
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


@dataclass
class Receiver:
    user: str
    url: Url
    progress: Progress
    last: int = 0  # the highest seq received, over every connection
    problems: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each message
    closes: list[int | None] = field(default_factory=list)
    connections: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            ws = await _connect(self.url(self.user, self.last), stop)
            if ws is None:
                return
            self.connections += 1
            try:
                async for raw in ws:
                    self._frame(json.loads(raw))
            except websockets.ConnectionClosed:
                pass
            finally:
                self.closes.append(ws.close_code)
                with contextlib.suppress(Exception):
                    await ws.close()

    def _frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "message":
            seq = frame["data"]["seq"]
            if seq != self.last + 1:
                what = "twice" if seq <= self.last else "gap/out of order"
                self.problems.append(f"{self.user}: got seq {seq} after {self.last} ({what})")
            self.last = max(self.last, seq)
            self.arrivals.append(time.monotonic())
            self.progress.tick()
        elif kind == "recovered" and frame["data"].get("truncated"):
            self.problems.append(f"{self.user}: recovery truncated after {self.last}")

    def first_after(self, moment: float) -> float | None:
        return next((t for t in self.arrivals if t >= moment), None)


@dataclass
class Sender:
    user: str
    url: Url
    rate: float  # messages per second
    progress: Progress
    acked: dict[str, int] = field(default_factory=dict)  # message id -> seq
    resends: int = 0
    problems: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        ws: ClientConnection | None = None
        waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        reader: asyncio.Task[None] | None = None
        started = time.monotonic()
        try:
            while not stop.is_set():
                cid = f"{self.user}-{n}"
                while cid not in self.acked:
                    if ws is None:
                        ws = await _connect(self.url(self.user, None), stop)
                        if ws is None:
                            return
                        reader = asyncio.create_task(self._read(ws, waiting))
                    reply = await self._send(ws, cid, waiting)
                    if reply is None:  # the socket closed: reconnect and send the same id again
                        with contextlib.suppress(Exception):
                            await ws.close()
                        ws = None
                        self.resends += 1
                        continue
                    if reply["type"] == "ack":
                        self.acked[cid] = int(reply["data"]["seq"])
                        self.progress.tick()
                    elif reply["data"]["code"] == "unavailable":
                        self.resends += 1
                        await asyncio.sleep(0.1)  # back off, then re-send the same id
                    else:
                        self.problems.append(f"{cid}: {reply}")
                        return
                n += 1
                # Pacing, not synchronisation: hold the load at `rate`.
                await asyncio.sleep(max(started + n / self.rate - time.monotonic(), 0))
        finally:
            if reader is not None:
                reader.cancel()
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _send(
        self, ws: ClientConnection, cid: str, waiting: dict[str, asyncio.Future[dict[str, Any]]]
    ) -> dict[str, Any] | None:
        fut = waiting[cid] = asyncio.get_running_loop().create_future()
        try:
            await ws.send(json.dumps({"type": "message", "id": cid, "data": {"content": cid}}))
            return await asyncio.wait_for(fut, T(15))
        except (websockets.ConnectionClosed, TimeoutError, ConnectionError):
            return None
        finally:
            waiting.pop(cid, None)

    @staticmethod
    async def _read(
        ws: ClientConnection, waiting: dict[str, asyncio.Future[dict[str, Any]]]
    ) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                fut = waiting.get(frame.get("id") or "")
                if frame["type"] in ("ack", "error") and fut is not None and not fut.done():
                    fut.set_result(frame)
        except websockets.ConnectionClosed:
            pass
        for fut in waiting.values():  # the socket is gone: whoever waits re-sends
            if not fut.done():
                fut.set_exception(ConnectionError("socket closed"))


class ChatLoad:
    """``senders`` x ``rate`` messages per second into one room, ``receivers`` watching it."""

    def __init__(self, url: Url, senders: int = 10, receivers: int = 10, rate: float = 25) -> None:
        self.progress = Progress()
        self.senders = [Sender(f"s{i}", url, rate, self.progress) for i in range(senders)]
        self.receivers = [Receiver(f"r{i}", url, self.progress) for i in range(receivers)]
        self.stop_receivers = asyncio.Event()
        self.stop_senders = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for r in self.receivers:
            self._tasks.append(asyncio.create_task(r.run(self.stop_receivers)))
        for s in self.senders:
            self._tasks.append(asyncio.create_task(s.run(self.stop_senders)))

    @property
    def acked(self) -> dict[str, int]:
        return {cid: seq for s in self.senders for cid, seq in s.acked.items()}

    async def wait_acked(self, count: int, timeout: float) -> None:
        await self.progress.until(lambda: len(self.acked) >= count, timeout, f"{count} acks")

    async def finish(self, timeout: float = 30) -> int:
        """Stop sending, let every receiver catch up with the last acked seq; that seq."""
        self.stop_senders.set()
        await asyncio.gather(*self._tasks[len(self.receivers) :], return_exceptions=True)
        top = max(self.acked.values(), default=0)
        try:
            await self.progress.until(
                lambda: all(r.last >= top for r in self.receivers), timeout, "receivers"
            )
        except AssertionError:
            pass  # the caller's checks say which receiver fell short, and how
        self.stop_receivers.set()
        for task in self._tasks[: len(self.receivers)]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return top

    def problems(self) -> list[str]:
        return [p for x in (*self.senders, *self.receivers) for p in x.problems]


class Editors:
    """Collaboration clients (the Python SDK) inserting unique words into one document at once;
    ``urls`` are the gateways' collaboration endpoints, taken in turn."""

    def __init__(
        self,
        urls: str | list[str],
        room: str,
        session: str,
        editors: int = 3,
        pause: float = 0.1,
        prefix: str = "ed",
    ) -> None:
        urls = [urls] if isinstance(urls, str) else urls
        self.session = session
        self.pause = pause
        self.clients = [
            CollaborationClient(urls[i % len(urls)], room, tokens(f"{prefix}{i}", room), **opts())
            for i in range(editors)
        ]
        self.typed: list[str] = []
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for c in self.clients:
            await c.connect()
            await c.join(self.session)
        self._tasks = [
            asyncio.create_task(self._type(c, random.Random(i))) for i, c in enumerate(self.clients)
        ]

    async def _type(self, client: CollaborationClient, rng: random.Random) -> None:
        n = 0
        while not self.stop.is_set():
            word = f"<{client.info.user_id if client.info else '?'}.{n}>"
            # Between two words, never inside one (ASCII: UTF-16 positions are str indices).
            doc = client.document
            ends = [0] + [i + 1 for i, ch in enumerate(doc) if ch == ">"]
            client.insert(rng.choice(ends), word)
            self.typed.append(word)
            n += 1
            await asyncio.sleep(self.pause)  # pacing, not synchronisation

    async def finish(self) -> tuple[str, list[str]]:
        """Stop typing; once every client is synced and at the server's version, the server's
        content and each client's document."""
        self.stop.set()
        await asyncio.gather(*self._tasks)
        await asyncio.wait_for(asyncio.gather(*(c.synced() for c in self.clients)), T(60))
        snap = await self.clients[0].snapshot()
        deadline = time.monotonic() + T(20)
        while any(c.version != snap.version for c in self.clients):
            assert time.monotonic() < deadline, [c.version for c in self.clients]
            await asyncio.sleep(0.05)  # remote edits still arriving
        docs = [c.document for c in self.clients]
        for c in self.clients:
            await c.close()
        return snap.content, docs
