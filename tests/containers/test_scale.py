"""compose.scale.yaml: two gateways behind HAProxy, three chat and two collaboration workers, a
3-node NATS cluster with R3 streams.

A message sent through one gateway reaches clients on the other gateway and behind the balancer,
and keeps flowing with one NATS node stopped; the workers share the partitions; killing the
event stream's leader during traffic loses and doubles nothing (the stall is reported).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import nats
import nats.js.errors
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
    scaled.run("start", "nats-3")  # the cluster whole again for the tests after this one


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
    names = [subjects.EVENTS_STREAM, subjects.COMMANDS_STREAM, subjects.COLLAB_COMMANDS_STREAM]
    deadline = time.monotonic() + T(60)
    for name in [*names, "KV_" + subjects.LEASES_BUCKET, "KV_" + subjects.SNAPSHOTS_BUCKET]:
        while True:  # a node restarted by the test before this one may still be rejoining
            nc = await _cluster(scaled)
            try:
                info = await nc.jetstream().stream_info(name)
                break
            except Exception:
                assert time.monotonic() < deadline, f"{name} not answering"
                await asyncio.sleep(1)  # polling a cluster that settles on its own
            finally:
                await nc.close()
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.name == "atomic-guide"


NODE_SERVICE = {"nats-1": "nats", "nats-2": "nats-2", "nats-3": "nats-3"}


async def _cluster(scaled: ComposeProject) -> Any:
    """A client on all three nodes' host port (only nats-1 publishes one): reconnects forever."""
    return await nats.connect(
        f"nats://127.0.0.1:{scaled.env['AG_NATS_PORT']}", max_reconnect_attempts=-1
    )


async def _current_leader(scaled: ComposeProject, timeout: float) -> str:
    """The event stream's leader once all three replicas are current."""
    deadline = time.monotonic() + T(timeout)
    seen: object = None
    while True:
        try:
            nc = await _cluster(scaled)
            try:
                info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
            finally:
                await nc.close()
            replicas = info.cluster.replicas or [] if info.cluster else []
            if info.cluster and info.cluster.leader and len(replicas) == 2:
                if all(r.current for r in replicas):
                    return str(info.cluster.leader)
        except Exception as exc:  # a node still starting: ask again
            seen = exc
        assert time.monotonic() < deadline, f"never three current replicas: {seen!r}"
        await asyncio.sleep(1)  # polling a cluster that settles on its own


async def test_the_workers_share_the_partitions_through_leases(scaled: ComposeProject) -> None:
    deadline = time.monotonic() + T(120)
    while True:
        nc = await _cluster(scaled)
        try:
            kv = await nc.jetstream().key_value(subjects.LEASES_BUCKET)
            owners: dict[str, str] = {}
            for key in await kv.keys():
                entry = await kv.get(key)
                owners[key] = (entry.value or b"").decode()
        except Exception:
            owners = {}
        finally:
            await nc.close()
        chat = {v for k, v in owners.items() if k.startswith("chat.p.")}
        collab = {v for k, v in owners.items() if k.startswith("collab.p.")}
        if chat == {"chat-1", "chat-2", "chat-3"} and collab == {
            "collaboration-1",
            "collaboration-2",
        }:
            break
        assert time.monotonic() < deadline, owners
        await asyncio.sleep(1)  # polling leases the workers take on their own
    assert sum(1 for k in owners if k.startswith("chat.p.")) == 16


async def test_killing_the_event_streams_leader_during_traffic_loses_nothing(
    scaled: ComposeProject,
) -> None:
    gw1, gw2, _ = ports(scaled)
    for p in (gw1, gw2):
        await wait_http(f"http://127.0.0.1:{p}/readyz", timeout=180)
    leader = await _current_leader(scaled, 180)
    secret = scaled.env["AG_JWT_SECRET"]
    context = "course-" + uuid.uuid4().hex[:8]
    sender = await join(gw1, "sam", context, secret)
    await chat_ready(sender, timeout=90)

    acked: dict[str, int] = {}
    ack_times: list[float] = []
    killed_at = 0.0
    n = 0
    started = time.monotonic()
    while not killed_at or sum(1 for t in ack_times if t >= killed_at) < 40:
        assert time.monotonic() - started < T(120), f"only {len(acked)} acks"
        frame_id = f"m{n}"
        reply = await send_until_acked(sender, frame_id, f"message {n}")
        assert reply["type"] == "ack", reply
        acked[frame_id] = reply["data"]["seq"]
        ack_times.append(time.monotonic())
        n += 1
        if n == 20:  # traffic flowing: SIGKILL the leader's container
            scaled.run("kill", NODE_SERVICE[leader])
            killed_at = time.monotonic()
    after = [t for t in ack_times if t >= killed_at]
    stall = max(b - a for a, b in zip(ack_times, ack_times[1:], strict=False))
    await sender.close()
    scaled.run("start", NODE_SERVICE[leader])

    nc = await _cluster(scaled)
    try:
        msgs = []
        seq = 1
        js = nc.jetstream()
        settle = time.monotonic() + T(60)
        while True:  # the room's messages, read back from the log after the election
            try:
                m = await js.get_msg(
                    subjects.EVENTS_STREAM,
                    seq=seq,
                    next=True,
                    subject=subjects.chat_messages(context),
                )
            except nats.js.errors.NotFoundError:
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                # the restarted node rejoining may move the leader once more: ask again
                assert time.monotonic() < settle, "the event stream never answered again"
                await asyncio.sleep(0.5)
                continue
            msgs.append(json.loads(m.data))
            seq = m.seq + 1
    finally:
        await nc.close()
    stored = Counter(m["clientId"] for m in msgs)
    print(
        f"\n[scale-out nats] killed stream leader {leader} after 20 acks; acked {len(acked)},"
        f" {len(after)} after the kill; lost {sum(1 for c in acked if c not in stored)},"
        f" doubled {sum(1 for v in stored.values() if v > 1)}; longest stall {stall:.2f}s"
    )
    assert len(after) >= 40
    assert all(c in stored for c in acked)
    assert all(v == 1 for v in stored.values())
    assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
