"""Analytics: subscriptions, latest values, re-subscription after reconnect."""

from __future__ import annotations

import asyncio

import pytest
from fake_server import FakeServer, Peer, iso_now, timeout, token

from atomic_guide_client import AnalyticsClient, Backoff


async def update(peer: Peer, metric: str, **value: object) -> None:
    await peer.send("metric_update", {"metric": metric, "value": value, "timestamp": iso_now()})


async def wait_for_value(client: AnalyticsClient, metric: str, key: str, expected: object) -> None:
    async with asyncio.timeout(timeout()):
        while (client.value(metric) or {}).get(key) != expected:
            await client.__anext__()


async def test_subscribe_confirms_and_latest_values_follow_updates(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = AnalyticsClient(server.url, "ctx", token(), backoff=fast_backoff)
    await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()
    assert peer.ws.request is not None and peer.ws.request.path == "/api/analytics/ws?batch=1"

    subscribing = asyncio.ensure_future(client.subscribe(["engagement", "activity", "engagement"]))
    request = await peer.recv_type("subscribe")
    assert request["data"] == {"metrics": ["engagement", "activity"]}
    await peer.send("subscribed", {"metrics": ["engagement", "activity"]}, id=request["id"])
    await update(peer, "engagement", onlineUsers=3, activeUsers=2)
    assert await asyncio.wait_for(subscribing, timeout()) == ["engagement", "activity"]
    await wait_for_value(client, "engagement", "onlineUsers", 3)
    assert client.subscriptions == {"engagement", "activity"}
    await update(peer, "engagement", onlineUsers=4, activeUsers=2)
    await wait_for_value(client, "engagement", "onlineUsers", 4)

    unsubscribing = asyncio.ensure_future(client.unsubscribe(["engagement"]))
    request = await peer.recv_type("unsubscribe")
    await peer.send("unsubscribed", {"metrics": ["engagement"]}, id=request["id"])
    await asyncio.wait_for(unsubscribing, timeout())
    assert client.subscriptions == {"activity"} and "engagement" not in client.latest
    await client.close()


async def test_subscriptions_are_renewed_after_a_reconnect(
    server: FakeServer, fast_backoff: Backoff
) -> None:
    client = AnalyticsClient(server.url, "ctx", token(), backoff=fast_backoff)
    await asyncio.wait_for(client.connect(), timeout())
    peer = await server.next_peer()
    subscribing = asyncio.ensure_future(client.subscribe(["performance"]))
    request = await peer.recv_type("subscribe")
    await peer.send("subscribed", {"metrics": ["performance"]}, id=request["id"])
    await asyncio.wait_for(subscribing, timeout())
    await peer.close(1001, "draining")

    peer2 = await server.next_peer()
    again = await peer2.recv_type("subscribe")
    assert again["data"] == {"metrics": ["performance"]} and again["id"] != request["id"]
    await peer2.send("subscribed", {"metrics": ["performance"]}, id=again["id"])
    await update(peer2, "performance", submissions=5, averageScore=80.0)
    await wait_for_value(client, "performance", "submissions", 5)
    await client.close()


async def test_an_empty_subscription_is_refused_locally() -> None:
    client = AnalyticsClient("ws://127.0.0.1:9", "ctx", "t")
    with pytest.raises(ValueError):
        await client.subscribe([])
    await client.close()
