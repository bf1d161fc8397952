"""The analytics endpoint's subscriptions, with a real Conn and stand-ins for the hub and NATS.

What matters is order: ``subscribed``, then the current value of each metric, then only newer
live updates of subscribed metrics, whatever the timing of the aggregator's answer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import nats.errors
import pytest

from services.gateway.analytics import AnalyticsEndpoint
from services.gateway.connection import Conn
from shared import subjects
from shared.auth import Identity
from shared.config import load_settings
from shared.schemas.analytics import CurrentReply, CurrentRequest, metric_update_data
from shared.schemas.wire import decode_client_frame, encode_frame

CTX = "course-1"


class FakeHub:
    gateway_id = "gw"

    def __init__(self) -> None:
        self.accept: dict[str, Any] = {}

    async def join(self, subject: str, conn: Conn, accept: Any = None) -> None:
        self.accept[subject] = accept

    async def leave(self, subject: str, conn: Conn) -> None:
        self.accept.pop(subject, None)

    def deliver(self, conn: Conn, metric: str, version: int, value: dict[str, Any]) -> None:
        """What Hub._on_live does for one member: filter, then push the shared text."""
        stamp = "2026-01-05T09:30:00.000Z"
        text = encode_frame("metric_update", stamp, metric_update_data(metric, value, stamp))
        headers = {subjects.HDR_METRIC: metric, subjects.HDR_VERSION: str(version)}
        if self.accept[subjects.metrics_live(CTX)](headers, text.decode()):
            conn.push(text.decode())


class FakeNats:
    """Answers RPC_METRICS_CURRENT when the test says so (or fails)."""

    def __init__(self) -> None:
        self.answer: asyncio.Queue[CurrentReply | Exception] = asyncio.Queue()
        self.asked = asyncio.Event()

    def jetstream(self) -> Any:
        return None

    async def request(self, subject: str, data: bytes, timeout: float) -> Any:
        req = msgspec.json.decode(data, type=CurrentRequest)
        assert subject == subjects.RPC_METRICS_CURRENT and req.contextIds == [CTX]
        self.asked.set()
        reply = await self.answer.get()
        if isinstance(reply, Exception):
            raise reply

        class Msg:
            data = msgspec.json.encode(reply)

        return Msg()


def current(version: int, **values: Any) -> CurrentReply:
    return CurrentReply(now=1_767_605_400_000, version=version, seq=1, values={CTX: values})


class Harness:
    def __init__(self) -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.hub = FakeHub()
        self.nc = FakeNats()
        settings = load_settings({"AG_JWT_SECRET": "x" * 32, "AG_COMMAND_TIMEOUT_S": "1"})
        self.ep = AnalyticsEndpoint(settings, self.hub, self.nc, None)  # type: ignore[arg-type]

        async def send(msg: dict[str, Any]) -> None:
            await self.sent.put(json.loads(msg["text"]))

        self.conn = Conn("analytics", send, 100, "peer")
        self.conn.identity = Identity("ann", "Ann", frozenset({CTX}), ("instructor",), 1e12)
        self.conn.context_id = CTX

    async def open(self) -> dict[str, Any]:
        self.conn.start()
        await self.ep.on_open(self.conn, None)
        return await self.next()

    async def frame(self, type: str, metrics: list[str], id: str) -> None:
        raw = json.dumps({"type": type, "id": id, "data": {"metrics": metrics}})
        frame = decode_client_frame("analytics", raw)
        await self.conn.reply(self.ep.handle(self.conn, frame))

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.sent.get(), 2)

    async def nothing_more(self) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.sent.get(), 0.2)

    async def close(self) -> None:
        await self.ep.on_close(self.conn)
        await self.conn.stop()


async def test_subscribe_sends_subscribed_then_current_values_then_newer_updates() -> None:
    h = Harness()
    assert (await h.open())["type"] == "connected"
    await h.frame("subscribe", ["activity", "performance"], "s1")
    await h.nc.asked.wait()
    # Live updates arrive while the aggregator computes the current values: v5 is older than
    # the answer (v7) and must not be sent; v9 is newer and must follow the current value.
    h.hub.deliver(h.conn, "activity", 5, {"messages": 1})
    h.hub.deliver(h.conn, "activity", 9, {"messages": 3})
    await h.nc.answer.put(current(7, activity={"messages": 2}, performance={"submissions": 0}))
    sub = await h.next()
    assert (sub["type"], sub["id"], sub["data"]) == (
        "subscribed",
        "s1",
        {"metrics": ["activity", "performance"]},
    )
    updates = [await h.next() for _ in range(3)]
    assert [(u["data"]["metric"], u["data"]["value"]) for u in updates] == [
        ("activity", {"messages": 2}),
        ("activity", {"messages": 3}),
        ("performance", {"submissions": 0}),
    ]
    assert all("id" not in u for u in updates)
    # Later: an out-of-order (older) frame is dropped, a newer one passes.
    h.hub.deliver(h.conn, "activity", 8, {"messages": 99})
    h.hub.deliver(h.conn, "activity", 10, {"messages": 4})
    assert (await h.next())["data"]["value"] == {"messages": 4}
    await h.nothing_more()
    await h.close()


async def test_only_subscribed_metrics_are_forwarded_and_unsubscribe_stops_them() -> None:
    h = Harness()
    await h.open()
    await h.frame("subscribe", ["engagement"], "s1")
    await h.nc.answer.put(current(1, engagement={"onlineUsers": 1}))
    assert (await h.next())["type"] == "subscribed"
    assert (await h.next())["data"]["metric"] == "engagement"
    h.hub.deliver(h.conn, "activity", 2, {"messages": 1})  # not subscribed
    h.hub.deliver(h.conn, "engagement", 3, {"onlineUsers": 2})
    assert (await h.next())["data"]["value"] == {"onlineUsers": 2}
    await h.frame("unsubscribe", ["engagement"], "u1")
    reply = await h.next()
    assert (reply["type"], reply["id"], reply["data"]) == (
        "unsubscribed",
        "u1",
        {"metrics": ["engagement"]},
    )
    h.hub.deliver(h.conn, "engagement", 4, {"onlineUsers": 3})
    await h.nothing_more()
    await h.close()


async def test_an_unavailable_aggregator_gets_unavailable_and_subscribes_nothing() -> None:
    h = Harness()
    await h.open()
    await h.frame("subscribe", ["activity"], "s1")
    await h.nc.asked.wait()
    h.hub.deliver(h.conn, "activity", 5, {"messages": 1})  # held, then dropped
    await h.nc.answer.put(nats.errors.NoRespondersError())
    err = await h.next()
    assert (err["type"], err["id"], err["data"]["code"]) == ("error", "s1", "unavailable")
    h.hub.deliver(h.conn, "activity", 6, {"messages": 2})
    await h.nothing_more()
    await h.close()


async def test_unsubscribe_while_subscribe_is_in_flight_wins() -> None:
    h = Harness()
    await h.open()
    await h.frame("subscribe", ["activity"], "s1")
    await h.frame("unsubscribe", ["activity"], "u1")
    await h.nc.answer.put(current(1, activity={"messages": 0}))
    assert [(await h.next())["type"] for _ in range(2)] == ["subscribed", "unsubscribed"]
    h.hub.deliver(h.conn, "activity", 2, {"messages": 1})
    await h.nothing_more()
    await h.close()


def test_only_instructors_and_admins_may_watch() -> None:
    h = Harness()
    ident = Identity("x", "X", frozenset({CTX}), ("learner",), 1e12)
    assert not h.ep.allowed(ident)
    assert h.ep.allowed(Identity("x", "X", frozenset(), ("admin",), 1e12))
    assert not h.ep.allowed(Identity("x", "X", frozenset(), ("service",), 1e12))
