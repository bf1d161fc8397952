"""compose.scale.yaml: two gateways behind HAProxy, a 3-node NATS cluster with R3 streams.

A message sent through one gateway reaches clients on the other gateway and behind the balancer,
and keeps flowing with one NATS node stopped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from shared import subjects
from tests.conftest import T
from tests.containers.compose import ComposeProject
from tests.containers.engine import APP_IMAGE, LB_IMAGE, NATS_IMAGE, compose_cli, require_images
from tests.containers.stack import chat_ready, http_get, join, stack_env, wait_http
from tests.helpers import Client, free_port

pytestmark = [pytest.mark.containers, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def scaled() -> Iterator[ComposeProject]:
    require_images(APP_IMAGE, NATS_IMAGE, LB_IMAGE)
    compose_cli()
    env = stack_env(AG_GATEWAY2_PUBLISH_PORT=str(free_port()), AG_LB_PUBLISH_PORT=str(free_port()))
    project = ComposeProject(["compose.yaml", "compose.scale.yaml"], env, prefix="agscale")
    try:
        project.up()
        yield project
    except BaseException:
        print(project.logs())
        raise
    finally:
        project.down()


def ports(stack: ComposeProject) -> tuple[int, int, int]:
    e = stack.env
    return (
        int(e["AG_GATEWAY_PUBLISH_PORT"]),
        int(e["AG_GATEWAY2_PUBLISH_PORT"]),
        int(e["AG_LB_PUBLISH_PORT"]),
    )


async def send_until_acked(client: Client, frame_id: str, content: str) -> dict[str, Any]:
    """Re-send the same frame (deduplicated by id) while a NATS election answers `unavailable`."""
    deadline = time.monotonic() + T(60)
    while True:
        await client.send({"type": "message", "id": frame_id, "data": {"content": content}})
        reply = await client.expect(("ack", "error"), 15, where=lambda f: f.get("id") == frame_id)
        if reply["type"] == "ack" or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(1)  # the cluster is electing a leader; ask again


def content_is(text: str) -> Any:
    return lambda f: f["data"]["content"] == text


async def test_a_message_through_one_gateway_reaches_the_other_and_the_balancer(
    scaled: ComposeProject,
) -> None:
    gw1, gw2, lb = ports(scaled)
    for p in (gw1, gw2, lb):
        await wait_http(f"http://127.0.0.1:{p}/readyz", timeout=180)
    secret = scaled.env["AG_JWT_SECRET"]
    context = "course-" + uuid.uuid4().hex[:8]

    alice = await join(gw1, "alice", context, secret)
    bob = await join(gw2, "bob", context, secret)
    carol = await join(lb, "carol", context, secret)
    await chat_ready(alice, timeout=90)
    ack = await send_until_acked(alice, "m1", "hello from gateway-1")
    assert ack["type"] == "ack" and ack["data"]["seq"] == 1
    await bob.expect("message", 10, where=content_is("hello from gateway-1"))
    await carol.expect("message", 10, where=content_is("hello from gateway-1"))

    # One NATS node down: R3 streams keep a quorum, clients reconnect to the others.
    scaled.run("stop", "nats-3")
    ack = await send_until_acked(bob, "m2", "hello from gateway-2")
    assert ack["type"] == "ack" and ack["data"]["seq"] == 2
    await alice.expect("message", 30, where=content_is("hello from gateway-2"))
    await carol.expect("message", 30, where=content_is("hello from gateway-2"))
    for c in (alice, bob, carol):
        await c.close()


def test_the_balancer_spreads_requests_over_both_gateways(scaled: ComposeProject) -> None:
    _, _, lb = ports(scaled)
    # leastconn: a socket still closing on one gateway sends a few requests to the other first.
    served: set[str | None] = set()
    deadline = time.monotonic() + T(20)
    while served != {"gateway-1", "gateway-2"} and time.monotonic() < deadline:
        status, headers = http_get(f"http://127.0.0.1:{lb}/healthz")
        assert status == 200
        served.add({k.lower(): v for k, v in headers.items()}.get("x-served-by"))
        time.sleep(0.1)  # sequential requests, as a browser reconnecting would make
    assert served == {"gateway-1", "gateway-2"}


async def test_streams_are_replicated_three_ways(scaled: ComposeProject) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{scaled.env['AG_NATS_PORT']}")
    try:
        js = nc.jetstream()
        names = [subjects.EVENTS_STREAM, subjects.COMMANDS_STREAM, subjects.COLLAB_COMMANDS_STREAM]
        for name in [*names, "KV_" + subjects.LEASES_BUCKET]:
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.name == "atomic-guide"
    finally:
        await nc.close()
