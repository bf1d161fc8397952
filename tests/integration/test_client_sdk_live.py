"""The Python client SDK against the real stack: analytics subscriptions and collaborative
editing (every received frame checked by ``wire_audit``, as in test_client_sdk.py)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import nats
import pytest
from atomic_guide_client import (
    AnalyticsClient,
    ChatClient,
    CollaborationClient,
    ForbiddenError,
    utf16_len,
)
from atomic_guide_client.frames import (
    MetricUpdateFrame,
)

from shared import subjects
from shared.schemas.analytics import CurrentRequest
from shared.schemas.wire import encode
from tests.conftest import T
from tests.helpers import ROOT, Stack
from tests.integration.sdk_support import (
    Frames,
    ctx,
    opts,
    poll,
    tokens,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("wire_audit")]


# --- analytics --------------------------------------------------------------------------------
ANALYTICS = (ROOT / "services" / "analytics" / "__main__.py").exists()


async def _start_analytics(stack: Stack) -> None:
    stack.start_service("analytics")
    nc = await nats.connect(stack.nats_url)
    try:

        async def answers() -> bool:
            req = encode(CurrentRequest(contextIds=["__probe__"]))
            await nc.request(subjects.RPC_METRICS_CURRENT, req, timeout=0.5)
            return True

        await poll(answers, 30, "the analytics aggregator\n" + stack.services["analytics"].tail())
    finally:
        await nc.close()


@pytest.mark.skipif(not ANALYTICS, reason="no analytics service (services/analytics) yet")
async def test_analytics_subscription_gets_values_then_updates_and_survives_a_gateway_restart(
    stack: Stack,
) -> None:
    await _start_analytics(stack)
    c, url = ctx(), stack.url("/api/analytics/ws")
    with pytest.raises(ForbiddenError):
        async with AnalyticsClient(url, c, tokens("lea", c), **opts()):
            pass
    instructor = tokens("ann", c, roles=("instructor",))
    dash = AnalyticsClient(url, c, instructor, **opts())
    updates = Frames(dash)
    async with dash:
        assert await dash.subscribe(["activity", "engagement"]) == ["activity", "engagement"]
        await updates.until(
            lambda: set(dash.latest) == {"activity", "engagement"}, 10, "the current values"
        )
        assert (dash.value("activity") or {}).get("messages") == 0

        async with ChatClient(stack.url(), c, tokens("alice", c), **opts()) as alice:
            await alice.send_message("counted")
            await updates.until(
                lambda: (dash.value("activity") or {}).get("messages") == 1, 10, "activity"
            )

        await stack.stop_gateway(0)
        await until(lambda: not dash.connected, 10, "the dashboard to notice")
        await stack.restart_gateway(0)
        await updates.until(lambda: len(updates.of("connected")) == 2, 30, "the reconnect")
        reconnected = max(i for i, f in enumerate(updates.all) if f.type == "connected")

        def fresh_values() -> set[str]:
            later = updates.all[reconnected:]
            return {f.data.metric for f in later if isinstance(f, MetricUpdateFrame)}

        # re-subscribed by the client on the new connection: fresh values, same subscriptions
        await updates.until(
            lambda: fresh_values() == {"activity", "engagement"}, 30, "values after the restart"
        )
        assert dash.subscriptions == {"activity", "engagement"}
        assert (dash.value("activity") or {}).get("messages") == 1


# --- collaboration ----------------------------------------------------------------------------
COLLABORATION = (ROOT / "services" / "collaboration" / "service.py").exists() and (
    ROOT / "services" / "gateway" / "collaboration.py"
).exists()
ALPHABET = ["a", "b", "Z", " ", "é", "😀", "👍🏽", "🎉", "\n", "中"]


def _random_edit(client: CollaborationClient, rng: random.Random) -> None:
    """One random insert or delete on code-point boundaries (never splitting a surrogate pair)."""
    text = client.document
    if text and rng.random() < 0.4:
        start = rng.randrange(len(text))
        end = min(len(text), start + rng.randint(1, 4))
        client.delete(utf16_len(text[:start]), utf16_len(text[start:end]))
    else:
        at = rng.randint(0, len(text))
        chunk = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 3)))
        client.insert(utf16_len(text[:at]), chunk)


def at_version(client: CollaborationClient, version: int) -> Callable[[], bool]:
    return lambda: client.version == version


@pytest.mark.skipif(not COLLABORATION, reason="no collaboration service yet")
async def test_three_collaboration_clients_editing_at_once_converge_on_the_servers_document(
    make_stack: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="atomic_guide_client")
    stack: Stack = await make_stack(chat=False, services=["collaboration"])
    c, session = ctx(), "doc-1"
    seed = random.randrange(2**32)
    url = stack.url("/api/collaboration/ws")
    clients = [
        CollaborationClient(url, c, tokens(user, c), **opts()) for user in ("alice", "bob", "carol")
    ]
    frames = [Frames(client) for client in clients]
    try:
        for client in clients:
            await client.connect()
            joined = await client.join(session)
            assert joined.session_id == session
        await frames[0].until(lambda: len(clients[0].participants) == 3, 10, "all three joined")

        async def typist(client: CollaborationClient, rng: random.Random) -> None:
            for _ in range(40):
                _random_edit(client, rng)
                client.cursor(rng.randint(0, utf16_len(client.document)))
                # Pacing, not synchronisation: spread the edits so that they cross in flight.
                await asyncio.sleep(rng.uniform(0, 0.01))

        rngs = [random.Random(seed + i) for i in range(len(clients))]
        await asyncio.gather(*(typist(cl, rng) for cl, rng in zip(clients, rngs, strict=True)))
        await asyncio.wait_for(asyncio.gather(*(cl.synced() for cl in clients)), T(60))

        snapshot = await clients[0].snapshot()
        for client, seen in zip(clients, frames, strict=True):
            await seen.until(at_version(client, snapshot.version), 20, f"seed {seed}")
        documents = [cl.document for cl in clients]
        assert documents == [snapshot.content] * 3, f"seed {seed}"
        assert snapshot.version >= 3 * 40 // 2  # buffered edits merge, but most went alone
        remote = [len(seen.of("edit")) for seen in frames]
        assert all(n > 0 for n in remote), remote
        # Remote edits that overtake our ack are held for it, not a reason to fetch a snapshot.
        # (A resync after an *ack* stays legitimate: under load the gateway may send an ack
        # before the edits applied ahead of it, after waiting ACK_ORDER_WAIT_S for them.)
        resyncs = [r.getMessage() for r in caplog.records if "resync" in r.getMessage()]
        assert not [m for m in resyncs if "after remote edit" in m], resyncs
    finally:
        for client in clients:
            await client.close()
