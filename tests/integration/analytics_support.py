"""Helpers and fixtures shared by the analytics integration tests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS

from shared import subjects
from shared.schemas.analytics import CurrentReply, CurrentRequest, QueryReply, QueryRequest
from shared.schemas.wire import encode
from tests.conftest import T
from tests.helpers import ROOT, Client, Stack, token


def ctx() -> str:
    return "course-" + uuid.uuid4().hex[:8]


async def rpc_current(
    nc: NATS, context: str, now: int | None = None, timeout: float = 2
) -> CurrentReply:
    req = CurrentRequest(contextIds=[context], now=now)
    msg = await nc.request(subjects.RPC_METRICS_CURRENT, encode(req), timeout=T(timeout))
    return msgspec.json.decode(msg.data, type=CurrentReply)


async def rpc_query(nc: NATS, sql: str) -> QueryReply:
    msg = await nc.request(
        subjects.RPC_ANALYTICS_QUERY, encode(QueryRequest(sql=sql)), timeout=T(10)
    )
    return msgspec.json.decode(msg.data, type=QueryReply)


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll an async condition another process changes; returns its truthy result."""
    deadline = time.monotonic() + T(timeout)
    while True:
        try:
            result = await check()
        except (TimeoutError, nats.errors.Error):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling another process


async def start_analytics(stack: Stack, nc: NATS) -> None:
    stack.start_service("analytics")

    async def ready() -> bool:
        await rpc_current(nc, "__probe__", timeout=0.5)
        return True

    await wait_for(ready, 30, "the aggregator to answer\n" + stack.services["analytics"].tail())


async def caught_up(nc: NATS, stack: Stack, timeout: float = 30) -> int:
    """Wait until the aggregator has processed everything in the log; its checkpoint."""
    js = nc.jetstream()
    last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq

    async def done() -> int | None:
        seq = (await rpc_current(nc, "__probe__", timeout=1)).seq
        return seq if seq >= last else None

    result: int = await wait_for(done, timeout, f"the aggregator to reach seq {last}")
    return result


async def stored(nc: NATS, n: int) -> None:
    """Core publishes reach the stream asynchronously: wait until it holds ``n`` messages."""
    js = nc.jetstream()

    async def enough() -> bool:
        return (await js.stream_info(subjects.EVENTS_STREAM)).state.messages >= n

    await wait_for(enough, 30, f"{n} messages in the log")


def cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=T(timeout),
    )


async def watch(stack: Stack, context: str, metrics: list[str], gateway: int = 0) -> Client:
    """An instructor's dashboard, subscribed; the initial values are consumed."""
    tok = token("ann", context, roles=("instructor",))
    c = await Client.connect(
        stack.url("/api/analytics/ws", gateway=gateway, token=tok, contextId=context)
    )
    connected = await c.expect("connected")
    assert connected["data"]["roles"] == ["instructor"]
    reply = await c.request(
        {"type": "subscribe", "id": "sub-1", "data": {"metrics": metrics}}, "subscribed"
    )
    assert reply["data"] == {"metrics": metrics}
    for m in metrics:
        await c.expect("metric_update", where=lambda f, m=m: f["data"]["metric"] == m)
    return c


async def update_where(
    c: Client, metric: str, check: Callable[[dict[str, Any]], bool], timeout: float = 5
) -> dict[str, Any]:
    """Read this metric's updates in order (older ones are consumed) until one passes."""
    deadline = time.monotonic() + T(timeout)
    while True:
        left = max(deadline - time.monotonic(), 0.001) / T(1)
        frame = await c.expect("metric_update", left, where=lambda f: f["data"]["metric"] == metric)
        value: dict[str, Any] = frame["data"]["value"]
        if check(value):
            return value


# --- live metrics over sockets --------------------------------------------------------------
