"""The Python client SDK against the real stack: nats-server, services and gateway processes.

Every frame the SDK receives in these tests is also checked against its typed frames
(``wire_audit``): a server field the SDK does not model, or a frame type it does not know,
fails the test that saw it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import msgspec
import nats
import pytest
from atomic_guide_client import (
    AnalyticsClient,
    Backoff,
    ChatClient,
    CollaborationClient,
    ForbiddenError,
    State,
    utf16_len,
)
from atomic_guide_client import _socket as sdk_socket
from atomic_guide_client._dispatch import Frame
from atomic_guide_client.connection import Connection
from atomic_guide_client.frames import (
    AckFrame,
    FrameDecodeError,
    MetricUpdateFrame,
    UnknownFrame,
    decode_server_frame,
)
from atomic_guide_client.payloads import ChatAck, EditAck

from shared import subjects
from shared.schemas.analytics import CurrentRequest
from shared.schemas.commands import HistoryReply, HistoryRequest
from shared.schemas.wire import encode
from tests.conftest import T
from tests.helpers import ROOT, Stack, http_status, token, unmodelled_fields

pytestmark = pytest.mark.integration

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


@pytest.fixture(autouse=True)
def wire_audit(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
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
        if isinstance(frame, AckFrame):  # data is an open dict: a chat or an edit ack
            keys = set(obj["data"])
            if not any(keys <= ACK_FIELDS[t] for t in ACK_FIELDS):
                problems.add(f"ack data {sorted(keys)} fits neither ChatAck nor EditAck")
    assert not problems, "server frames the SDK does not fully model:\n  " + "\n  ".join(
        sorted(problems)
    )


# --- chat -------------------------------------------------------------------------------------
@pytest.mark.parametrize("auth_mode", ["message", "query"])
async def test_a_message_is_acked_and_reaches_everyone_once(stack: Stack, auth_mode: str) -> None:
    c = ctx()
    url = f"ws://127.0.0.1:{stack.gateways[0][1]}"  # the SDK appends /api/chat/ws
    alice = ChatClient(url, c, tokens("alice", c), **opts(auth_mode=auth_mode))
    bob = ChatClient(url, c, tokens("bob", c), **opts(auth_mode=auth_mode))
    at_alice, at_bob = Frames(alice), Frames(bob)
    async with alice:
        assert alice.info is not None and alice.info.user_id == "alice"
        assert alice.info.context_id == c and alice.info.roles == ["learner"]
        await at_alice.until(lambda: bool(at_alice.of("presence")), 5, "presence")
        assert [u.user_id for u in at_alice.of("presence")[0].data.users] == ["alice"]
        await bob.connect()
        await at_alice.until(lambda: bool(at_alice.of("user_joined")), 5, "bob's join")

        ack = await alice.send_message("hello 👋🏽", message_type="markdown")
        assert ack.seq == 1 and ack.message_id
        await at_bob.until(lambda: bool(at_bob.of("message")), 5, "the message at bob")
        (got,) = at_bob.of("message")
        assert (got.data.id, got.data.seq, got.data.content) == (ack.message_id, 1, "hello 👋🏽")
        assert got.data.message_type == "markdown"
        assert (got.data.author.id, got.data.author.name) == ("alice", "Alice")
        await at_alice.until(lambda: bool(at_alice.of("message")), 5, "alice's own message")

        assert bob.typing(True) is True
        await at_alice.until(lambda: bool(at_alice.of("typing")), 5, "bob typing")
        assert at_alice.of("typing")[0].data.user_id == "bob"

        page = await bob.history(limit=10)
        assert [m.content for m in page.messages] == ["hello 👋🏽"] and page.has_more is False
        second = await bob.send_message("second")
        assert second.seq == 2
        await at_alice.until(lambda: len(at_alice.of("message")) == 2, 5, "the second message")
        assert [m.data.seq for m in at_alice.of("message")] == [1, 2]
        assert alice.last_seq == 2
        await bob.close()
        await at_alice.until(lambda: bool(at_alice.of("user_left")), 5, "bob's leave")


async def test_messages_queued_while_the_gateway_is_down_are_delivered_once_when_it_returns(
    stack: Stack, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="atomic_guide_client")
    c = ctx()
    alice = ChatClient(stack.url(), c, tokens("alice", c), **opts())
    seen = Frames(alice)
    async with alice:
        first_connection = alice.info.connection_id if alice.info else None
        await alice.send_message("before")

        await stack.stop_gateway(0)  # SIGTERM: the gateway closes its sockets with 1001
        assert http_status(stack.http("/healthz")) == 0
        await until(lambda: alice.state is not State.CONNECTED, 10, "alice to notice")
        assert any("after close 1001" in r.getMessage() for r in caplog.records)

        queued = [f"while down {i} ✉️" for i in range(5)]
        sends = [asyncio.create_task(alice.send_message(text)) for text in queued]
        await until(lambda: alice.pending == len(queued), 5, "the sends to be queued")
        assert not any(s.done() for s in sends) and alice.state is not State.CONNECTED

        await stack.restart_gateway(0)  # same port: the client's URL works again
        acks = await asyncio.wait_for(asyncio.gather(*sends), T(30))

        assert alice.info is not None and alice.info.connection_id != first_connection
        assert [a.seq for a in acks] == [2, 3, 4, 5, 6]
        history = await alice.history(limit=100)
        counts = Counter(m.content for m in history.messages)
        assert [m.content for m in history.messages] == ["before", *queued]
        duplicates = sum(n - 1 for n in counts.values())
        assert duplicates == 0 and alice.pending == 0
        # the live frames too: every message once, in order
        await seen.until(lambda: len(seen.of("message")) == 6, 10, "six message frames")
        assert seen.contents() == ["before", *queued]
        with capsys.disabled():
            print(
                f"\n[reconnect] sent while the gateway was down: {len(queued)}, "
                f"delivered after it came back: {len(acks)} (seq {acks[0].seq}-{acks[-1].seq}), "
                f"stored: {sum(counts[q] for q in queued)}, duplicates: {duplicates}"
            )


async def test_a_message_whose_ack_was_lost_with_the_gateway_is_stored_once(
    make_stack: Callable[..., Any],
) -> None:
    """The server applies the message, the gateway dies before the ack goes out; the client
    re-sends it with the same id after reconnecting and gets the original seq back."""
    stack: Stack = await make_stack(env={"AG_COMMAND_TIMEOUT_S": "20"})
    chat = stack.services["chat"]
    assert chat.p is not None
    c = ctx()
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    try:
        alice = ChatClient(stack.url(), c, tokens("alice", c), **opts())
        seen = Frames(alice)
        async with alice:
            await alice.send_message("before")
            commands = (await js.stream_info(subjects.COMMANDS_STREAM)).state.last_seq

            chat.p.send_signal(signal.SIGSTOP)  # the command waits, durably, in the stream
            try:
                send = asyncio.create_task(alice.send_message("in flight"))

                async def published() -> bool:
                    info = await js.stream_info(subjects.COMMANDS_STREAM)
                    return bool(info.state.last_seq > commands)

                await poll(published, 10, "the command in AG_CMDS")
                await stack.stop_gateway(0)
            finally:
                chat.p.send_signal(signal.SIGCONT)
            assert not send.done()

            async def stored() -> bool:
                req = encode(HistoryRequest(c))
                msg = await nc.request(subjects.RPC_CHAT_HISTORY, req, timeout=T(2))
                reply = msgspec.json.decode(msg.data, type=HistoryReply)
                return len(reply.messages) == 2

            await poll(stored, 20, "the chat service to store the message")
            await stack.restart_gateway(0)
            ack = await asyncio.wait_for(send, T(30))

            assert ack.seq == 2
            history = await alice.history()
            assert [(m.seq, m.content) for m in history.messages] == [
                (1, "before"),
                (2, "in flight"),
            ]
            assert history.messages[1].id == ack.message_id
            # delivered once: by recovery (lastSeq=1), not again for the re-sent frame
            await alice.send_message("after")
            await seen.until(lambda: "after" in seen.contents(), 10, "the last message")
            assert seen.contents() == ["before", "in flight", "after"]
    finally:
        await nc.close()


@pytest.mark.parametrize("missed", [3, 12], ids=["replayed", "truncated-then-paged"])
async def test_a_reconnecting_client_sees_every_missed_message_once_in_order(
    make_stack: Callable[..., Any], missed: int
) -> None:
    """AG_RECOVERY_MAX is 5 in tests: 12 missed messages make the server answer
    ``recovered {truncated}`` and the client pages back through ``history`` (5 per page)."""
    stack: Stack = await make_stack(gateways=2)
    c = ctx()
    alice = ChatClient(stack.url(gateway=0), c, tokens("alice", c), history_page_size=5, **opts())
    bob = ChatClient(stack.url(gateway=1), c, tokens("bob", c), **opts())
    seen = Frames(alice)
    async with alice, bob:
        await bob.send_message("m0")
        await seen.until(lambda: seen.contents() == ["m0"], 5, "m0 at alice")

        await stack.stop_gateway(0)
        await until(lambda: alice.state is not State.CONNECTED, 10, "alice to be disconnected")
        for i in range(1, missed + 1):
            await bob.send_message(f"m{i}")
        assert seen.contents() == ["m0"]

        await stack.restart_gateway(0)
        await seen.until(lambda: bool(seen.of("recovered")), 30, "recovery to finish")
        (recovered,) = seen.of("recovered")
        if missed <= 5:
            assert (recovered.data.count, recovered.data.truncated) == (missed, False)
        else:
            assert recovered.data.truncated is True
        expected = [f"m{i}" for i in range(missed + 1)]
        assert seen.contents() == expected
        assert [f.data.seq for f in seen.of("message")] == list(range(1, missed + 2))
        assert alice.last_seq == missed + 1
        # and live again after recovery
        await bob.send_message("live")
        await seen.until(lambda: seen.contents()[-1:] == ["live"], 10, "the live message")
        assert seen.contents() == [*expected, "live"]


async def test_the_token_is_refreshed_before_it_expires_and_the_socket_lives_on(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    c = ctx()
    minted: list[str] = []
    third = asyncio.Event()

    def short_lived() -> str:  # 3-second tokens: connect, then a refresh every ~2.4 s
        minted.append(token("alice", c, ttl=3))
        if len(minted) >= 3:
            third.set()
        return minted[-1]

    caplog.set_level(logging.INFO, logger="atomic_guide_client")
    async with ChatClient(stack.url(), c, short_lived, **opts()) as alice:
        assert alice.info is not None
        connection = alice.info.connection_id
        first_exp = jwt.decode(minted[0], options={"verify_signature": False})["exp"]
        await asyncio.wait_for(third.wait(), T(15))
        # the third token is asked for 80 % into the second one's life: past the first's exp
        assert time.time() > first_exp
        ack = await alice.send_message("still here")
        assert ack.seq == 1
        assert alice.connected and alice.info.connection_id == connection
    metrics = _metrics(stack)
    assert metrics.get('ag_gateway_frames_in_total{endpoint="chat",type="refresh"}', 0) >= 1
    assert 'ag_gateway_closes_total{code="4401"}' not in metrics
    assert not [r for r in caplog.records if "client ended" in r.getMessage()]
    assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]


def _metrics(stack: Stack) -> dict[str, float]:
    """The gateway's Prometheus samples, by name with labels."""
    with urllib.request.urlopen(stack.http("/metrics"), timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


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
