"""Fixtures that start real parts: a nats-server with JetStream and the services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ops.natsd import NatsServer, start_nats
from tests.helpers import Stack, start_service_ready, wait_chat_ready

pytestmark = pytest.mark.integration


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats(
        tmp_path / "nats-data", sync_interval="always", log_file=tmp_path / "nats.log"
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(request: pytest.FixtureRequest) -> str:
    """The embedded binary by default; a NATS container with ``--nats=container``."""
    if request.config.getoption("nats", default="embedded") == "container":
        return str(request.getfixturevalue("nats_container").url)
    return str(request.getfixturevalue("nats_server").url)


@pytest.fixture
async def nats_bus(nats_url: str) -> AsyncIterator[Any]:
    """A ``NatsBus`` on the test's nats-server, streams provisioned (duplicate window 60 s)."""
    from shared.bus.nats import connect, ensure_streams
    from shared.config import load_settings

    bus = await connect(load_settings({"AG_NATS_URL": nats_url}), "test")
    await ensure_streams(bus.js, 1, 60)
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def memory_bus() -> AsyncIterator[Any]:
    from shared.bus.memory import MemoryBus

    mem = MemoryBus()
    yield mem
    await mem.close()


@pytest.fixture(params=["memory_bus", "nats_bus"])
def bus(request: pytest.FixtureRequest) -> Any:
    """The in-memory twin, then a ``NatsBus`` on a real nats-server: the same test on both."""
    return request.getfixturevalue(request.param)


async def _provision(url: str) -> None:
    import nats

    from ops.streams import ensure_streams

    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture
async def make_stack(tmp_path: Path, nats_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Start chat + gateways against the test's nats-server: ``await make_stack(env={...})``."""
    stacks: list[Stack] = []
    await _provision(nats_url)

    async def make(
        env: dict[str, str] | None = None,
        gateways: int = 1,
        chat: bool = True,
        services: Sequence[str] = (),
    ) -> Stack:
        """``services``: more backends to start (e.g. ``["collaboration"]``), each waited for."""
        stack = Stack(tmp_path / f"stack{len(stacks)}", nats_url, env)
        stack.tmp.mkdir(parents=True, exist_ok=True)
        stacks.append(stack)
        if chat:
            stack.start_service("chat")
            await wait_chat_ready(nats_url)
        for name in services:
            if name not in stack.services:
                await start_service_ready(stack, name)
        for _ in range(gateways):
            stack.start_gateway()
        return stack

    try:
        yield make
    finally:
        for s in stacks:
            s.stop()


@pytest.fixture
async def stack(make_stack: Callable[..., Any]) -> Stack:
    result: Stack = await make_stack()
    return result


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    """A NATS client on the test's server."""
    import nats

    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def astack(make_stack: Callable[..., Any], nc: Any) -> Stack:
    """Chat + one gateway + the analytics aggregator."""
    from tests.integration.analytics_support import start_analytics

    stack: Stack = await make_stack()
    await start_analytics(stack, nc)
    return stack


@pytest.fixture
def wire_audit(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every server frame the SDK decodes must fit its typed frames (see sdk_support)."""
    from tests.integration.sdk_support import audit_frames

    yield from audit_frames(monkeypatch)
