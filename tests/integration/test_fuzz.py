"""Fuzz: thousands of bad frames per endpoint, each answered by exactly one protocol error.

A seeded generator (``fuzz_support``) makes every kind of bad frame the protocol names. Each is
followed by a ``ping`` (not rate limited), so the replies between two ``pong``s are the replies
to one bad frame: exactly one ``error``, with a code the protocol allows for it, never
``internal``, with the frame's ``id`` whenever that could be read. Afterwards the same socket and
a well-behaved newcomer still work, no process died, and the gateway counted no internal error.

``AG_FUZZ_FRAMES`` (default 10,000 per endpoint) and ``AG_FUZZ_SEED`` set the run; the report
line printed per endpoint gives both.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from tests.helpers import Client, Stack, token
from tests.integration.analytics_support import start_analytics
from tests.integration.fuzz_support import ENDPOINT_PATHS, Bad, Fuzzer

pytestmark = pytest.mark.integration

FRAMES = int(os.environ.get("AG_FUZZ_FRAMES", "10000"))
SEED = int(os.environ.get("AG_FUZZ_SEED", "20261203"))
CHUNK = 200  # frames in flight before their replies are read
MAX_FRAME = 65536
ROOM = "fuzz-room"
ROLES = {"chat": ("learner",), "analytics": ("instructor",), "collaboration": ("learner",)}


@pytest.fixture
async def fstack(make_stack: Callable[..., Any], nc: NATS) -> Stack:
    env = {"AG_RATE_FRAMES_PER_MINUTE": "10000000", "AG_AUTH_TIMEOUT_S": "120"}
    stack: Stack = await make_stack(env=env, services=["collaboration"])
    await start_analytics(stack, nc)
    return stack


async def open_socket(stack: Stack, endpoint: str, user: str) -> Client:
    tok = token(user, ROOM, roles=ROLES[endpoint])
    c = await Client.connect(stack.url(ENDPOINT_PATHS[endpoint], token=tok, contextId=ROOM))
    await c.expect("connected")
    if endpoint == "chat":
        await c.expect("presence")
    if endpoint == "collaboration":
        await c.request(
            {"type": "join_session", "id": "j", "data": {"sessionId": "fz"}}, "session_joined"
        )
    return c


def readable_id(payload: str | bytes) -> str | None:
    """The id a careful server can echo: a 1-64 character string in a JSON object."""
    if isinstance(payload, bytes):
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
        return None
    try:
        cid.encode()
    except UnicodeEncodeError:
        return None
    return cid


async def replies_until_pong(c: Client, pong_id: str) -> list[dict[str, Any]]:
    out = []
    while True:
        frame = await c.recv(timeout=30)
        if frame["type"] == "pong" and frame.get("id") == pong_id:
            return out
        out.append(frame)


async def fuzz(c: Client, fuzzer: Fuzzer, frames: int) -> tuple[Counter[str], Counter[str]]:
    kinds: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    oversize_at = set(fuzzer.rng.sample(range(frames), 2))  # a third in a minute would close
    sent = 0
    while sent < frames:
        chunk: list[tuple[Bad, str]] = []
        for _ in range(min(CHUNK, frames - sent)):
            bad = fuzzer.oversized(MAX_FRAME) if sent in oversize_at else fuzzer.next()
            pong = f"p{sent}"
            await c.ws.send(bad.payload)
            await c.ws.send(json.dumps({"type": "ping", "id": pong}))
            chunk.append((bad, pong))
            sent += 1
        for bad, pong in chunk:
            replies = await replies_until_pong(c, pong)
            what = f"{bad.kind}: {bad.payload[:300]!r} -> {replies}"
            assert [f["type"] for f in replies] == ["error"], what
            error = replies[0]
            code = error["data"]["code"]
            assert code != "internal" and code in bad.codes, what
            if bad.kind not in ("deep", "oversized"):
                assert error.get("id") == readable_id(bad.payload), what
            kinds[bad.kind] += 1
            codes[code] += 1
    return kinds, codes


def internal_errors(stack: Stack) -> float:
    with urllib.request.urlopen(stack.http("/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith('ag_gateway_errors_total{code="internal"}'):
            return float(line.split()[-1])
    return 0.0


async def still_works(stack: Stack, endpoint: str, fuzzed: Client) -> None:
    """The fuzzed socket and a newcomer in the same room both behave normally."""
    other = await open_socket(stack, endpoint, "newcomer")
    if endpoint == "chat":
        ack = await fuzzed.request(
            {"type": "message", "id": "ok", "data": {"content": "still here"}}, "ack"
        )
        got = await other.expect("message", where=lambda f: f["data"]["content"] == "still here")
        assert got["data"]["seq"] == ack["data"]["seq"]
    elif endpoint == "analytics":
        for c in (fuzzed, other):
            sub = {"type": "subscribe", "id": "ok", "data": {"metrics": ["activity"]}}
            assert (await c.request(sub, "subscribed"))["data"] == {"metrics": ["activity"]}
            await c.expect("metric_update")
    else:
        snap = await fuzzed.request({"type": "snapshot", "id": "s", "data": {}}, "snapshot")
        version = snap["data"]["version"]
        edit = {
            "type": "edit",
            "id": "ok",
            "data": {"operation": "insert", "position": 0, "content": "ok", "version": version},
        }
        ack = await fuzzed.request(edit, "ack")
        seen = await other.expect("edit", where=lambda f: f["data"]["content"] == "ok")
        assert seen["data"]["version"] == ack["data"]["version"]
    await other.close()


@pytest.mark.parametrize("endpoint", ["chat", "analytics", "collaboration"])
async def test_every_bad_frame_gets_one_protocol_error_and_nothing_breaks(
    fstack: Stack, endpoint: str
) -> None:
    seed = SEED + sorted(ENDPOINT_PATHS).index(endpoint)
    fuzzed = await open_socket(fstack, endpoint, "fuzzer")
    kinds, codes = await fuzz(fuzzed, Fuzzer(endpoint, seed), FRAMES)
    await still_works(fstack, endpoint, fuzzed)
    assert fuzzed.ws.close_code is None
    for name, proc in [*fstack.services.items(), *((p.name, p) for p, _ in fstack.gateways)]:
        assert proc.p is not None and proc.p.poll() is None, f"{name} died\n{proc.tail()}"
    assert internal_errors(fstack) == 0
    print(
        f"\n[fuzz] {endpoint}: {sum(kinds.values())} bad frames, seed {seed}; "
        f"kinds {dict(sorted(kinds.items()))}; codes {dict(sorted(codes.items()))}"
    )
