"""Batched direct gets (nats-server 2.11+) over one standing reply subscription.

A subscription per request and ``next_msg`` per entry cost a SUB/UNSUB and a ``wait_for`` task
for every entry read: reading a page of 73 messages took ~5 ms. Here one wildcard inbox
subscription, made on first use and kept across reconnects by nats-py, hands each reply to the
request waiting on its token, in order; a request is done at its ``204`` end-of-batch (or
``404``: nothing there).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.bus.port import Entry, Unavailable

__all__ = ["DirectGets"]


class _Batch:
    __slots__ = ("entries", "done")

    def __init__(self, done: asyncio.Future[int]) -> None:
        self.entries: list[Entry] = []
        self.done = done


class DirectGets:
    def __init__(self, nc: NATS, stream: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.DIRECT.GET.{stream}"
        self._prefix = nc.new_inbox()
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._waiting: dict[str, _Batch] = {}
        self._tokens = itertools.count(1)

    async def get(self, req: dict[str, Any], timeout: float) -> tuple[list[Entry], int]:
        """One batched direct get: the entries, and how many more match after them."""
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)
        token = str(next(self._tokens))
        batch = _Batch(asyncio.get_running_loop().create_future())
        self._waiting[token] = batch
        try:
            await self.nc.publish(
                self.subject, json.dumps(req).encode(), reply=f"{self._prefix}.{token}"
            )
            pending = await asyncio.wait_for(batch.done, timeout)
            return batch.entries, pending
        finally:
            self._waiting.pop(token, None)  # a late reply then finds nobody and is dropped

    async def _on_reply(self, msg: Msg) -> None:
        batch = self._waiting.get(msg.subject.rpartition(".")[2])
        if batch is None or batch.done.done():
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            try:
                entry = Entry(int(headers["Nats-Sequence"]), headers["Nats-Subject"], msg.data)
            except (KeyError, ValueError):
                bad = Unavailable(f"direct get: a reply without its headers {headers}")
                batch.done.set_exception(bad)
                return
            batch.entries.append(entry)
        elif status == "404":
            batch.done.set_result(0)
        elif status == "204":  # end of batch
            batch.done.set_result(int(headers.get("Nats-Num-Pending", "0") or 0))
        else:
            batch.done.set_exception(Unavailable(f"direct get: {status} {headers}"))
