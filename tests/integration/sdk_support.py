"""Helpers shared by the SDK integration tests, and the wire audit every one of them runs."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import nats
import pytest
from atomic_guide_client import (
    Backoff,
)
from atomic_guide_client import _socket as sdk_socket
from atomic_guide_client._dispatch import Frame
from atomic_guide_client.connection import Connection
from atomic_guide_client.frames import (
    AckFrame,
    FrameDecodeError,
    UnknownFrame,
    decode_server_frame,
)
from atomic_guide_client.payloads import ChatAck, EditAck

from tests.conftest import T
from tests.helpers import Stack, token, unmodelled_fields

#: Reconnect quickly: the tests restart gateways and wait for clients to come back.
FAST = Backoff(base=0.05, cap=0.3)


def ctx() -> str:
    return "course-" + uuid.uuid4().hex[:8]


def opts(**extra: Any) -> dict[str, Any]:
    """Client options for tests: fast reconnects, no client-side pacing (the test stack
    allows 10000 frames a minute), timeouts scaled for slow machines."""
    return {"backoff": FAST, "frames_per_minute": None, "open_timeout": T(10), **extra}


def tokens(
    user: str, context: str, roles: tuple[str, ...] = ("learner",), ttl: float = 600
) -> Callable[[], str]:
    """A token provider that mints a fresh token on every call, like an LTI backend would."""
    return lambda: token(user, context, roles=roles, ttl=ttl)


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition the client's own tasks change (connection state, received frames)."""
    deadline = time.monotonic() + T(timeout)
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # polling state another task changes


async def poll(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll an async condition that another process changes."""
    deadline = time.monotonic() + T(timeout)
    while True:
        try:
            if await check():
                return
        except (TimeoutError, nats.errors.Error):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling another process


class Frames:
    """Every frame delivered by a client, in order, with a wait that wakes on each arrival."""

    def __init__(self, client: Connection) -> None:
        self.all: list[Frame] = []
        self._arrived = asyncio.Event()
        client.on("*", self._add)

    def _add(self, frame: Frame) -> None:
        self.all.append(frame)
        self._arrived.set()

    def of(self, type_: str) -> list[Any]:
        return [f for f in self.all if f.type == type_]

    def contents(self) -> list[str]:
        return [f.data.content for f in self.of("message")]

    async def until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(T(timeout)):
                while not check():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            recent = [f.type for f in self.all[-20:]]
            raise TimeoutError(f"timed out waiting for {what}; last frames {recent}") from None


# --- every frame the SDK sees must fit its types ---------------------------------------------
ACK_FIELDS = {t: {f.encode_name for f in msgspec.structs.fields(t)} for t in (ChatAck, EditAck)}


def audit_frames(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Record every raw server frame the SDK decodes; afterwards check each one is a known
    type whose fields the SDK's Structs all declare (msgspec would silently drop the rest)."""
    seen: list[bytes] = []

    def recording(raw: bytes | str) -> Any:
        seen.append(raw if isinstance(raw, bytes) else raw.encode())
        return decode_server_frame(raw)

    # _socket looks the decoder up at call time: the one place every received frame passes.
    monkeypatch.setattr(sdk_socket, "decode_server_frame", recording)
    yield seen
    problems: set[str] = set()
    for raw in seen:
        try:
            frame = decode_server_frame(raw)
        except FrameDecodeError as exc:
            problems.add(f"undecodable: {exc}: {raw[:200]!r}")
            continue
        obj = json.loads(raw)
        if isinstance(frame, UnknownFrame):
            problems.add(f"unknown frame type {frame.type!r}: {raw[:200]!r}")
            continue
        for path in unmodelled_fields(obj, type(frame)):
            problems.add(f"{frame.type}: {path} is not modelled by {type(frame).__name__}")
        problems.update(_against_the_schema_source(obj))
        if isinstance(frame, AckFrame):  # data is an open dict: a chat or an edit ack
            keys = set(obj["data"])
            if not any(keys <= ACK_FIELDS[t] for t in ACK_FIELDS):
                problems.add(f"ack data {sorted(keys)} fits neither ChatAck nor EditAck")
    assert not problems, "server frames the SDK does not fully model:\n  " + "\n  ".join(
        sorted(problems)
    )


def _against_the_schema_source(obj: dict[str, Any]) -> set[str]:
    """The frame's data must be one of the server's own frame Structs for its type (the schema
    source the AsyncAPI document is generated from), every field declared."""
    from shared.schemas.frames import SERVER_FRAMES

    candidates = {t[obj["type"]] for t in SERVER_FRAMES.values() if obj["type"] in t}
    if not candidates:
        return {f"{obj['type']}: not in shared.schemas.frames.SERVER_FRAMES"}
    for struct in candidates:
        try:
            msgspec.convert(obj["data"], struct)
        except msgspec.ValidationError:
            continue
        if not unmodelled_fields(obj["data"], struct):
            return set()
    names = sorted(c.__name__ for c in candidates)
    return {f"{obj['type']}: data {obj['data']!r:.120} fits none of {names}"}


def gateway_metrics(stack: Stack) -> dict[str, float]:
    """The gateway's Prometheus samples, by name with labels."""
    with urllib.request.urlopen(stack.http("/metrics"), timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
