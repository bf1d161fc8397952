"""The analytics endpoint's subscriptions on the in-memory bus: ordering against current values."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from services.gateway.analytics import AnalyticsEndpoint
from services.gateway.session import dispatch
from shared import subjects
from shared.auth import Identity
from shared.bus.port import Message
from shared.schemas.analytics import CurrentReply, CurrentRequest, metric_update_data
from shared.schemas.wire import decode_client_frame, encode_frame
from shared.timefmt import ms_to_ts
from tests.gateway_support import Kit, Socket

CTX = "course-1"


def current(version: int, **values: Any) -> CurrentReply:
    return CurrentReply(now=1_767_605_400_000, version=version, seq=1, values={CTX: values})


class Harness:
    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.ep = AnalyticsEndpoint(kit.parts)
        self.socket = Socket("analytics", 100)
        self.asked = asyncio.Event()
        self.answer: asyncio.Queue[CurrentReply | None] = asyncio.Queue()
        self.answering: list[asyncio.Task[None]] = []

    async def aggregator(self) -> None:
        async def answer(msg: Message) -> None:
            reply = await self.answer.get()
            if reply is not None:  # None: the aggregator does not answer
                await msg.respond(msgspec.json.encode(reply))

        async def on(msg: Message) -> None:
            req = msgspec.json.decode(msg.data, type=CurrentRequest)
            assert req.contextIds == [CTX]
            self.asked.set()
            self.answering.append(asyncio.create_task(answer(msg)))  # answered when told to

        await self.kit.bus.subscribe(subjects.RPC_METRICS_CURRENT, on)

    async def open(self) -> dict[str, Any]:
        self.authed = self.socket.open("ann", CTX, ("instructor",))
        await self.ep.on_open(self.authed, None)
        return await self.socket.next()

    async def frame(self, type: str, metrics: list[str], id: str) -> None:
        raw = json.dumps({"type": type, "id": id, "data": {"metrics": metrics}})
        frame = decode_client_frame("analytics", raw)
        await self.authed.reply(dispatch(self.ep, self.authed, frame))

    async def deliver(self, metric: str, version: int, value: dict[str, Any]) -> None:
        """A live update from the aggregator, through the bus and the fan-out."""
        stamp = ms_to_ts(1_767_605_400_000)
        frame = encode_frame("metric_update", stamp, metric_update_data(metric, value, stamp))
        headers = {subjects.HDR_METRIC: metric, subjects.HDR_VERSION: str(version)}
        await self.kit.bus.publish(subjects.metrics_live(CTX), frame, headers)
        await self.kit.bus.flush()

    async def next(self) -> dict[str, Any]:
        return await self.socket.next()

    async def close(self) -> None:
        await self.ep.on_close(self.authed)
        await self.socket.stop()
        for task in self.answering:
            task.cancel()


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    kit = await Kit().start()
    harness = Harness(kit)
    await harness.aggregator()
    yield harness
    await harness.close()
    await kit.stop()


async def test_subscribe_sends_subscribed_then_current_values_then_newer_updates(
    h: Harness,
) -> None:
    assert (await h.open())["type"] == "connected"
    await h.frame("subscribe", ["activity", "performance"], "s1")
    await h.asked.wait()
    # Live updates arrive while the aggregator computes the current values: v5 is older than
    # the answer (v7) and must not be sent; v9 is newer and must follow the current value.
    await h.deliver("activity", 5, {"messages": 1})
    await h.deliver("activity", 9, {"messages": 3})
    await h.answer.put(current(7, activity={"messages": 2}, performance={"submissions": 0}))
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
    await h.deliver("activity", 8, {"messages": 99})
    await h.deliver("activity", 10, {"messages": 4})
    assert (await h.next())["data"]["value"] == {"messages": 4}
    await h.socket.nothing_more()


async def test_only_subscribed_metrics_are_forwarded_and_unsubscribe_stops_them(
    h: Harness,
) -> None:
    await h.open()
    await h.frame("subscribe", ["engagement"], "s1")
    await h.answer.put(current(1, engagement={"onlineUsers": 1}))
    assert (await h.next())["type"] == "subscribed"
    assert (await h.next())["data"]["metric"] == "engagement"
    await h.deliver("activity", 2, {"messages": 1})  # not subscribed
    await h.deliver("engagement", 3, {"onlineUsers": 2})
    assert (await h.next())["data"]["value"] == {"onlineUsers": 2}
    await h.frame("unsubscribe", ["engagement"], "u1")
    reply = await h.next()
    assert (reply["type"], reply["id"], reply["data"]) == (
        "unsubscribed",
        "u1",
        {"metrics": ["engagement"]},
    )
    await h.deliver("engagement", 4, {"onlineUsers": 3})
    await h.socket.nothing_more()


async def test_an_unavailable_aggregator_gets_unavailable_and_subscribes_nothing(
    h: Harness,
) -> None:
    await h.open()
    await h.frame("subscribe", ["activity"], "s1")
    await h.asked.wait()
    await h.deliver("activity", 5, {"messages": 1})  # held, then dropped
    await h.answer.put(None)  # no answer: the request times out (AG_COMMAND_TIMEOUT_S=1)
    err = await h.next()
    assert (err["type"], err["id"], err["data"]["code"]) == ("error", "s1", "unavailable")
    await h.deliver("activity", 6, {"messages": 2})
    await h.socket.nothing_more()


async def test_unsubscribe_while_subscribe_is_in_flight_wins(h: Harness) -> None:
    await h.open()
    await h.frame("subscribe", ["activity"], "s1")
    await h.frame("unsubscribe", ["activity"], "u1")
    await h.answer.put(current(1, activity={"messages": 0}))
    assert [(await h.next())["type"] for _ in range(2)] == ["subscribed", "unsubscribed"]
    await h.deliver("activity", 2, {"messages": 1})
    await h.socket.nothing_more()


def test_only_instructors_and_admins_may_watch() -> None:
    kit = Kit()
    ep = AnalyticsEndpoint(kit.parts)
    assert not ep.allowed(Identity("x", "X", frozenset({CTX}), ("learner",), 1e12))
    assert ep.allowed(Identity("x", "X", frozenset(), ("admin",), 1e12))
    assert not ep.allowed(Identity("x", "X", frozenset(), ("service",), 1e12))
