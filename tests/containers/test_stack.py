"""compose.yaml end to end: the real images, chat over a WebSocket on the published gateway
port, and history that outlives a restarted chat container and a recreated NATS container."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.containers.compose import ComposeProject
from tests.containers.engine import APP_IMAGE, NATS_IMAGE, compose_cli, require_images
from tests.containers.stack import chat_ready, join, stack_env, wait_http

pytestmark = [pytest.mark.containers, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeProject]:
    require_images(APP_IMAGE, NATS_IMAGE)
    compose_cli()
    project = ComposeProject(["compose.yaml"], stack_env())
    try:
        project.up()
        yield project
    except BaseException:
        print(project.logs())
        raise
    finally:
        project.down()


CONTEXT = "course-" + uuid.uuid4().hex[:8]


def port(stack: ComposeProject, name: str) -> int:
    return int(stack.env[name])


async def test_chat_through_the_published_gateway_survives_a_chat_restart(
    stack: ComposeProject,
) -> None:
    gateway = port(stack, "AG_GATEWAY_PUBLISH_PORT")
    secret = stack.env["AG_JWT_SECRET"]
    await wait_http(f"http://127.0.0.1:{gateway}/readyz")

    alice = await join(gateway, "alice", CONTEXT, secret)
    bob = await join(gateway, "bob", CONTEXT, secret)
    await chat_ready(alice)
    ack = await alice.request({"type": "message", "id": "m1", "data": {"content": "hi"}}, "ack")
    assert ack["data"]["seq"] == 1
    assert (await bob.expect("message", 10))["data"]["content"] == "hi"

    # The chat service rebuilds its state from the event log: history is still there.
    stack.run("restart", "chat")
    history = await chat_ready(bob, timeout=90)
    assert [m["content"] for m in history["data"]["messages"]] == ["hi"]
    ack = await bob.request({"type": "message", "id": "m2", "data": {"content": "yo"}}, "ack")
    assert ack["data"]["seq"] == 2
    await alice.expect("message", 10, where=lambda f: f["data"]["content"] == "yo")
    await alice.close()
    await bob.close()


async def test_the_event_log_outlives_a_recreated_nats_container(stack: ComposeProject) -> None:
    gateway = port(stack, "AG_GATEWAY_PUBLISH_PORT")
    secret = stack.env["AG_JWT_SECRET"]
    stack.run("rm", "--stop", "--force", "nats")
    stack.up("nats")
    # The command queue is a memory stream: a new server starts without it. The services put it
    # (and their consumers) back by themselves: no provision re-run, no restarts.
    await wait_http(f"http://127.0.0.1:{gateway}/readyz", timeout=90)

    carol = await join(gateway, "carol", CONTEXT, secret)
    dave = await join(gateway, "dave", CONTEXT, secret)
    history = await chat_ready(carol, timeout=90)
    assert [m["content"] for m in history["data"]["messages"]] == ["hi", "yo"]
    ack = await carol.request({"type": "message", "id": "m3", "data": {"content": "ok"}}, "ack")
    assert ack["data"]["seq"] == 3
    await dave.expect("message", 10, where=lambda f: f["data"]["content"] == "ok")
    await carol.close()
    await dave.close()


def test_every_service_is_healthy_and_runs_as_the_unprivileged_user(
    stack: ComposeProject,
) -> None:
    import time

    deadline = time.monotonic() + 90
    services = [s for s in stack.run("config", "--services").split() if s not in ("nats",)]
    long_running = [s for s in services if s != "provision"]
    while True:
        health = {s: stack.health(s) for s in long_running}
        if all(h == "healthy" for h in health.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)  # health checks run on the engine's schedule
    assert health == {s: "healthy" for s in long_running}
    assert stack.inspect("provision")["State"]["ExitCode"] == 0  # type: ignore[index]
    for service in long_running:
        assert stack.run("exec", "-T", service, "id", "-u").strip() == "10001"
    # Host ports are on loopback only.
    bindings = stack.inspect("gateway")["NetworkSettings"]["Ports"]["8000/tcp"]  # type: ignore[index]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}


def test_nats_monitoring_and_jetstream_file_store(stack: ComposeProject) -> None:
    url = f"http://127.0.0.1:{port(stack, 'AG_NATS_MONITOR_PORT')}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as resp:
        jsz = json.load(resp)
    assert jsz["config"]["store_dir"].startswith("/data")
    assert jsz["streams"] >= 2
