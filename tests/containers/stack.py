"""Helpers for tests that run compose stacks: ports, readiness, chat clients through a gateway."""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.request
from typing import Any

from tests.conftest import T
from tests.helpers import Client, free_port, token

__all__ = ["chat_ready", "join", "stack_env", "wait_http"]


def stack_env(**ports: str) -> dict[str, str]:
    """A fresh secret and free loopback ports for every published port compose.yaml has."""
    env = {
        "AG_JWT_SECRET": secrets.token_urlsafe(48),
        "AG_GATEWAY_PUBLISH_PORT": str(free_port()),
        "AG_NATS_PORT": str(free_port()),
        "AG_NATS_MONITOR_PORT": str(free_port()),
        "AG_LOG_LEVEL": "info",
    }
    env.update(ports)
    return env


def http_get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers)
    except Exception:
        return 0, {}


async def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + T(timeout)
    while http_get(url)[0] != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200")
        await asyncio.sleep(0.5)  # polling containers that start on their own


async def join(port: int, user: str, context: str, secret: str) -> Client:
    url = (
        f"ws://127.0.0.1:{port}/api/chat/ws"
        f"?contextId={context}&token={token(user, context, secret=secret)}"
    )
    client = await Client.connect(url)
    await client.expect("connected")
    return client


async def chat_ready(client: Client, timeout: float = 60) -> dict[str, Any]:
    """History through the gateway, retried while the chat service answers `unavailable`."""
    deadline = time.monotonic() + T(timeout)
    attempt = 0
    while True:
        attempt += 1
        frame_id = f"ready{attempt}"
        await client.send({"type": "history", "id": frame_id, "data": {}})
        frame = await client.expect(
            ("history", "error"), 15, where=lambda f, fid=frame_id: f.get("id") == fid
        )
        if frame["type"] == "history":
            return frame
        if time.monotonic() > deadline:
            raise TimeoutError(f"chat service did not answer history: {frame}")
        await asyncio.sleep(1)  # the service is restarting; ask again
