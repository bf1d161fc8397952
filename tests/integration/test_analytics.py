"""Analytics end to end: real nats-server, chat, aggregator and gateways, WebSocket clients,
HTTP ingest, and the ``atomic-guide`` replay/query/export commands as subprocesses."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import duckdb
import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from shared import subjects
from shared.schemas.analytics import CurrentReply, CurrentRequest, QueryReply, QueryRequest
from shared.schemas.wire import encode
from shared.timefmt import now_ms
from tests.conftest import T
from tests.helpers import ROOT, Client, Stack, token

pytestmark = pytest.mark.integration


def ctx() -> str:
    return "course-" + uuid.uuid4().hex[:8]


async def rpc_current(
    nc: NATS, context: str, now: int | None = None, timeout: float = 2
) -> CurrentReply:
    req = CurrentRequest(contextIds=[context], now=now)
    msg = await nc.request(subjects.RPC_METRICS_CURRENT, encode(req), timeout=T(timeout))
    return msgspec.json.decode(msg.data, type=CurrentReply)


async def rpc_query(nc: NATS, sql: str) -> QueryReply:
    msg = await nc.request(
        subjects.RPC_ANALYTICS_QUERY, encode(QueryRequest(sql=sql)), timeout=T(10)
    )
    return msgspec.json.decode(msg.data, type=QueryReply)


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll an async condition another process changes; returns its truthy result."""
    deadline = time.monotonic() + T(timeout)
    while True:
        try:
            result = await check()
        except (TimeoutError, nats.errors.Error):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling another process


async def start_analytics(stack: Stack, nc: NATS) -> None:
    stack.start_service("analytics")

    async def ready() -> bool:
        await rpc_current(nc, "__probe__", timeout=0.5)
        return True

    await wait_for(ready, 30, "the aggregator to answer\n" + stack.services["analytics"].tail())


async def caught_up(nc: NATS, stack: Stack, timeout: float = 30) -> int:
    """Wait until the aggregator has processed everything in the log; its checkpoint."""
    js = nc.jetstream()
    last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq

    async def done() -> int | None:
        seq = (await rpc_current(nc, "__probe__", timeout=1)).seq
        return seq if seq >= last else None

    result: int = await wait_for(done, timeout, f"the aggregator to reach seq {last}")
    return result


async def stored(nc: NATS, n: int) -> None:
    """Core publishes reach the stream asynchronously: wait until it holds ``n`` messages."""
    js = nc.jetstream()

    async def enough() -> bool:
        return (await js.stream_info(subjects.EVENTS_STREAM)).state.messages >= n

    await wait_for(enough, 30, f"{n} messages in the log")


def cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=T(timeout),
    )


@pytest.fixture
async def nc(nats_url: str) -> Any:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def astack(make_stack: Callable[..., Any], nc: NATS) -> Stack:
    """Chat + one gateway + the aggregator."""
    stack: Stack = await make_stack()
    await start_analytics(stack, nc)
    return stack


async def watch(stack: Stack, context: str, metrics: list[str], gateway: int = 0) -> Client:
    """An instructor's dashboard, subscribed; the initial values are consumed."""
    tok = token("ann", context, roles=("instructor",))
    c = await Client.connect(
        stack.url("/api/analytics/ws", gateway=gateway, token=tok, contextId=context)
    )
    connected = await c.expect("connected")
    assert connected["data"]["roles"] == ["instructor"]
    reply = await c.request(
        {"type": "subscribe", "id": "sub-1", "data": {"metrics": metrics}}, "subscribed"
    )
    assert reply["data"] == {"metrics": metrics}
    for m in metrics:
        await c.expect("metric_update", where=lambda f, m=m: f["data"]["metric"] == m)
    return c


async def update_where(
    c: Client, metric: str, check: Callable[[dict[str, Any]], bool], timeout: float = 5
) -> dict[str, Any]:
    """Read this metric's updates in order (older ones are consumed) until one passes."""
    deadline = time.monotonic() + T(timeout)
    while True:
        left = max(deadline - time.monotonic(), 0.001) / T(1)
        frame = await c.expect("metric_update", left, where=lambda f: f["data"]["metric"] == metric)
        value: dict[str, Any] = frame["data"]["value"]
        if check(value):
            return value


# --- live metrics over sockets --------------------------------------------------------------
async def test_a_chat_message_moves_activity_within_two_seconds(astack: Stack) -> None:
    c = ctx()
    dash = await watch(astack, c, ["activity", "engagement"])
    alice = await Client.connect(astack.url(token=token("alice", c), contextId=c))
    await alice.expect("connected")
    await update_where(dash, "engagement", lambda v: v["onlineUsers"] == 1)
    sent = time.monotonic()
    ack = await alice.request({"type": "message", "id": "m1", "data": {"content": "hello"}}, "ack")
    assert ack["data"]["seq"] == 1
    activity = await update_where(dash, "activity", lambda v: v["messages"] == 1, timeout=2)
    assert time.monotonic() - sent < T(2)
    assert activity["events"] == 2  # alice's join and her message
    assert sum(m["events"] for m in activity["perMinute"]) == 2
    engagement = await update_where(dash, "engagement", lambda v: v["activeUsers"] == 1)
    assert engagement["messagesPerActiveUser"] == 1.0
    await alice.close()
    await dash.close()


async def test_a_user_on_two_gateways_is_online_once(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    stack: Stack = await make_stack(gateways=2)
    await start_analytics(stack, nc)
    c = ctx()
    dash = await watch(stack, c, ["engagement"], gateway=1)
    tabs = []
    for gw in (0, 1):
        tab = await Client.connect(stack.url(gateway=gw, token=token("alice", c), contextId=c))
        await tab.expect("connected")
        tabs.append(tab)
    bob = await Client.connect(stack.url(gateway=1, token=token("bob", c), contextId=c))
    await bob.expect("connected")
    await update_where(dash, "engagement", lambda v: v["onlineUsers"] == 2)
    await tabs[0].close()  # alice still has a tab on the other gateway
    await bob.close()
    await update_where(dash, "engagement", lambda v: v["onlineUsers"] == 1)
    assert (await rpc_current(nc, c)).values[c]["engagement"]["onlineUsers"] == 1
    await tabs[1].close()
    await update_where(dash, "engagement", lambda v: v["onlineUsers"] == 0)
    await dash.close()


async def test_learners_may_not_open_the_analytics_socket(astack: Stack) -> None:
    c = ctx()
    ws = await Client.connect(astack.url("/api/analytics/ws", token=token("lee", c), contextId=c))
    assert await ws.closed() == 4403


async def test_unsubscribe_stops_updates_of_that_metric(astack: Stack, nc: NATS) -> None:
    c = ctx()
    dash = await watch(astack, c, ["activity", "engagement"])
    reply = await dash.request(
        {"type": "unsubscribe", "id": "u1", "data": {"metrics": ["activity"]}}, "unsubscribed"
    )
    assert reply["data"] == {"metrics": ["activity"]}
    bad = await dash.request({"type": "subscribe", "id": "b1", "data": {"metrics": []}}, "error")
    assert bad["data"]["code"] == "invalid_message"
    alice = await Client.connect(astack.url(token=token("alice", c), contextId=c))
    await alice.expect("connected")
    await alice.request({"type": "message", "id": "m1", "data": {"content": "x"}}, "ack")
    await update_where(dash, "engagement", lambda v: v["activeUsers"] == 1)
    await caught_up(nc, astack)
    await dash.request({"type": "ping", "id": "p"}, "pong")  # everything before it has arrived
    assert not [f for f in dash.seen if f["data"].get("metric") == "activity"]
    await alice.close()
    await dash.close()


async def test_subscribe_without_the_aggregator_is_unavailable(
    make_stack: Callable[..., Any],
) -> None:
    stack: Stack = await make_stack()
    c = ctx()
    tok = token("ann", c, roles=("admin",))
    dash = await Client.connect(stack.url("/api/analytics/ws", token=tok, contextId=c))
    await dash.expect("connected")
    err = await dash.request(
        {"type": "subscribe", "id": "s1", "data": {"metrics": ["activity"]}}, "error", timeout=10
    )
    assert err["data"]["code"] == "unavailable"
    pong = await dash.request({"type": "ping", "id": "p"}, "pong")  # still open
    assert pong["id"] == "p"


# --- HTTP ingest ----------------------------------------------------------------------------
def assessment(context: str, **over: Any) -> dict[str, Any]:
    body = {
        "type": "assessment_submitted",
        "contextId": context,
        "userId": "alice",
        "assessmentId": "quiz-1",
        "score": 8,
        "maxScore": 10,
    }
    body.update(over)
    return body


async def test_posted_assessments_move_performance(astack: Stack) -> None:
    c = ctx()
    dash = await watch(astack, c, ["performance"])
    url = astack.http("/api/analytics/events")
    svc = token("lms", c, roles=("service",))
    async with httpx.AsyncClient(timeout=T(10)) as http:
        auth = {"Authorization": f"Bearer {svc}"}
        r = await http.post(url, json=assessment(c), headers={**auth, "Idempotency-Key": "k1"})
        assert r.status_code == 202, r.text
        assert r.json()["duplicate"] is False
        perf = await update_where(dash, "performance", lambda v: v["submissions"] == 1)
        assert perf["averageScore"] == 80.0 and perf["completionRate"] == 1.0
        # The same key again is stored once.
        again = await http.post(url, json=assessment(c), headers={**auth, "Idempotency-Key": "k1"})
        assert again.status_code == 202 and again.json()["duplicate"] is True
        body = assessment(c, userId="bob", score=3, assessmentId="quiz-2", completed=False)
        r = await http.post(url, json=body, headers=auth)
        assert r.status_code == 202
        perf = await update_where(dash, "performance", lambda v: v["submissions"] == 2)
    assert perf == {
        "submissions": 2,
        "averageScore": 55.0,
        "medianScore": 55.0,
        "completionRate": 0.5,
        "byAssessment": [
            {"assessmentId": "quiz-1", "submissions": 1, "averageScore": 80.0},
            {"assessmentId": "quiz-2", "submissions": 1, "averageScore": 30.0},
        ],
    }
    await dash.close()


REFUSALS: list[tuple[str | None, Any, int, str]] = [
    (None, {}, 401, "unauthenticated"),
    ("garbage", {}, 401, "unauthenticated"),
    ("learner", {}, 403, "forbidden"),
    ("other-context", {}, 403, "forbidden"),
    ("instructor", {"score": 11}, 400, "invalid_message"),
    ("instructor", {"score": -1}, 400, "invalid_message"),
    ("instructor", {"maxScore": 0}, 400, "invalid_message"),
    ("instructor", {"score": "8"}, 400, "invalid_message"),
    ("instructor", {"completed": 1}, 400, "invalid_message"),
    ("instructor", {"type": "chat.message"}, 400, "invalid_message"),
    ("instructor", {"extra": 1}, 400, "invalid_message"),
    ("instructor", {"score": None}, 400, "invalid_message"),
    ("instructor", "not json", 400, "invalid_json"),
    ("instructor", '{"type": "assessment_submitted", "userId": "\\ud800"}', 400, "invalid_json"),
]


async def test_ingest_refuses_bad_tokens_roles_and_bodies(astack: Stack, nc: NATS) -> None:
    c = ctx()
    tokens = {
        "garbage": "not-a-jwt",
        "learner": token("lee", c),
        "other-context": token("ann", "elsewhere", roles=("instructor",)),
        "instructor": token("ann", c, roles=("instructor",)),
    }
    js = nc.jetstream()
    before = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
    async with httpx.AsyncClient(timeout=T(10)) as http:
        for who, body, status, code in REFUSALS:
            headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
            if isinstance(body, dict):
                payload = {k: v for k, v in assessment(c, **body).items() if v is not None}
                content = json.dumps(payload).encode()
            else:
                content = body.encode()
            r = await http.post(
                astack.http("/api/analytics/events"), content=content, headers=headers
            )
            assert r.status_code == status, (who, body, r.text)
            assert r.json()["code"] == code and r.json()["error"], (who, body)
            if status == 401:
                assert r.headers["www-authenticate"] == "Bearer"
    assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == before


async def test_invalid_events_published_straight_to_nats_are_recorded_and_skipped(
    astack: Stack, nc: NATS
) -> None:
    c = ctx()
    js = nc.jetstream()
    subject = subjects.learning(c, "assessment_submitted")
    base = {
        "type": "learning.assessment_submitted",
        "contextId": c,
        "ts": now_ms(),
        "userId": "u",
        "assessmentId": "q",
        "maxScore": 4,
    }
    bad = await js.publish(subject, json.dumps(base).encode())  # no score
    await js.publish(subject, b"\xff not even json")
    await js.publish(subject, json.dumps({**base, "score": 5}).encode())  # above maxScore
    await js.publish(subject, json.dumps({**base, "score": 3}).encode())
    await caught_up(nc, astack)
    perf = (await rpc_current(nc, c)).values[c]["performance"]
    assert perf["submissions"] == 1 and perf["averageScore"] == 75.0
    reply = await rpc_query(nc, f"SELECT seq, reason FROM invalid_events WHERE seq >= {bad.seq}")
    assert [r[0] for r in reply.rows] == [bad.seq, bad.seq + 1, bad.seq + 2]
    assert "score" in reply.rows[0][1]
    assert astack.services["analytics"].p is not None
    assert astack.services["analytics"].p.poll() is None  # still running


# --- query, replay, export ------------------------------------------------------------------
async def test_query_runs_on_the_aggregator_refuses_writes_and_falls_back_to_the_file(
    astack: Stack, nc: NATS
) -> None:
    c = ctx()
    js = nc.jetstream()
    for i in range(3):
        ev = {"type": "chat.user_joined", "contextId": c, "ts": now_ms(), "userId": f"u{i}"}
        await js.publish(subjects.chat_presence(c), json.dumps({**ev, "userName": "U"}).encode())
    await caught_up(nc, astack)
    sql = f"SELECT user_id, type FROM events WHERE context_id = '{c}' ORDER BY seq"
    out = await asyncio.to_thread(cli, astack, "query", sql, "--json")
    assert out.returncode == 0, out.stderr
    assert [r["user_id"] for r in json.loads(out.stdout)] == ["u0", "u1", "u2"]
    out = await asyncio.to_thread(cli, astack, "query", sql, "--csv")
    assert out.stdout.splitlines()[:2] == ["user_id,type", "u0,chat.user_joined"]
    out = await asyncio.to_thread(cli, astack, "query", sql)
    assert "u2" in out.stdout and "(3 rows)" in out.stdout
    for write in ("DELETE FROM events", "SELECT 1; DROP TABLE events", "COPY events TO 'x.csv'"):
        out = await asyncio.to_thread(cli, astack, "query", write)
        assert out.returncode == 2 and "refused" in out.stderr, out.stderr
    # Without the aggregator the CLI opens the file read-only itself.
    assert astack.services["analytics"].stop() == 0
    out = await asyncio.to_thread(
        cli, astack, "query", f"SELECT count(*) AS n FROM ({sql})", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 3}]
    out = await asyncio.to_thread(cli, astack, "query", "DELETE FROM events")
    assert out.returncode == 2


async def _traffic(nc: NATS, contexts: list[str], n: int, seed: int = 7) -> None:
    """n scripted events over several contexts, straight into the log (core publishes)."""
    rnd = random.Random(seed)
    now = now_ms()
    for i in range(n):
        c = rnd.choice(contexts)
        user = f"u{rnd.randrange(6)}"
        ts = now - rnd.randrange(0, 2 * 3600_000)
        kind = rnd.random()
        if kind < 0.5:
            ev: dict[str, Any] = {
                "type": "chat.message",
                "contextId": c,
                "ts": ts,
                "messageId": f"m{i}",
                "seq": i,
                "userId": user,
                "userName": user,
                "content": "x",
            }
            subject = subjects.chat_messages(c)
        elif kind < 0.7:
            t = "chat.user_joined" if rnd.random() < 0.6 else "chat.user_left"
            ev = {"type": t, "contextId": c, "ts": ts, "userId": user, "userName": user}
            subject = subjects.chat_presence(c)
        elif kind < 0.85:
            ev = {
                "type": "collab.edit",
                "contextId": c,
                "ts": ts,
                "sessionId": "s",
                "version": i,
                "operation": "insert",
                "position": 0,
                "content": "x",
                "userId": user,
                "userName": user,
            }
            subject = subjects.collab_edits(c, "s")
        else:
            max_score = rnd.choice([1, 3, 7, 10, 100])
            ev = {
                "type": "learning.assessment_submitted",
                "contextId": c,
                "ts": ts,
                "userId": user,
                "assessmentId": f"q{rnd.randrange(3)}",
                "score": rnd.random() * max_score,
                "maxScore": max_score,
                "completed": rnd.random() < 0.8,
            }
            subject = subjects.learning(c, "assessment_submitted")
        await nc.publish(subject, json.dumps(ev).encode())
    await nc.flush()


async def test_killed_mid_batch_the_aggregator_loses_and_doubles_nothing(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    stack: Stack = await make_stack(
        chat=False, gateways=0, env={"AG_ANALYTICS_BATCH": "200", "AG_LOG_LEVEL": "info"}
    )
    js = nc.jetstream()
    contexts = [ctx() for _ in range(3)]
    await start_analytics(stack, nc)
    rnd = random.Random(3)
    for round_ in range(4):
        await _traffic(nc, contexts, 4000, seed=round_)
        await stored(nc, 4000 * (round_ + 1))
        # Let it get going, then kill it without warning (no chance to commit or ack).
        await asyncio.sleep(rnd.uniform(0.05, 0.4))  # a random moment to crash at
        assert stack.services["analytics"].stop(signal.SIGKILL) == -signal.SIGKILL
        await start_analytics(stack, nc)
    last = await caught_up(nc, stack, timeout=60)
    info = await js.stream_info(subjects.EVENTS_STREAM)
    assert last == info.state.last_seq
    counts = await rpc_query(
        nc, "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM events"
    )
    assert counts.rows == [[info.state.messages, info.state.messages, 1, last]]
    invalid = await rpc_query(nc, "SELECT count(*) FROM invalid_events")
    assert invalid.rows == [[0]]


async def test_replay_rebuilds_bit_identical_values_and_swaps_only_when_stopped(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    stack: Stack = await make_stack(chat=False, gateways=0)
    contexts = [ctx() for _ in range(4)]
    await start_analytics(stack, nc)
    await _traffic(nc, contexts, 3000)
    await nc.publish(subjects.chat_messages(contexts[0]), b"{broken")
    await stored(nc, 3001)
    await caught_up(nc, stack)
    fixed_now = now_ms()
    before = {c: (await rpc_current(nc, c, now=fixed_now)).values[c] for c in contexts}

    out = await asyncio.to_thread(cli, stack, "replay")
    assert out.returncode == 0, out.stderr
    assert "verified" in out.stderr and "compared 4 contexts with aggregator" in out.stderr
    assert "not swapped in" in out.stdout
    assert "3,001 events (3,000 stored, 1 invalid)" in out.stderr
    assert "100.0%" in out.stderr  # the progress bar finished

    live = stack.tmp / "analytics" / "events.duckdb"
    assert stack.services["analytics"].stop() == 0
    out = await asyncio.to_thread(cli, stack, "replay")
    assert out.returncode == 0, out.stderr
    assert f"compared 4 contexts with {live}" in out.stderr
    assert "swapped in" in out.stdout
    assert list((stack.tmp / "analytics").glob("events-*.bak.duckdb"))

    await start_analytics(stack, nc)  # resumes from the rebuilt file's checkpoint
    after = {c: (await rpc_current(nc, c, now=fixed_now)).values[c] for c in contexts}
    assert msgspec.json.encode(after) == msgspec.json.encode(before)
    await _traffic(nc, contexts, 10, seed=99)
    await stored(nc, 3011)
    await caught_up(nc, stack)
    counts = await rpc_query(nc, "SELECT count(*), count(DISTINCT seq) FROM events")
    assert counts.rows == [[3010, 3010]]


async def test_export_writes_partitioned_parquet(
    make_stack: Callable[..., Any], nc: NATS, tmp_path: Any
) -> None:
    stack: Stack = await make_stack(chat=False, gateways=0)
    contexts = [ctx() for _ in range(2)]
    await start_analytics(stack, nc)
    await _traffic(nc, contexts, 500)
    await stored(nc, 500)
    await caught_up(nc, stack)
    running = tmp_path / "pq-running"
    out = await asyncio.to_thread(cli, stack, "export", "--parquet", str(running))
    assert out.returncode == 0, out.stderr
    assert "rebuilt from the log" in out.stderr
    stack.services["analytics"].stop()
    stopped = tmp_path / "pq-stopped"
    out = await asyncio.to_thread(cli, stack, "export", "--parquet", str(stopped))
    assert out.returncode == 0, out.stderr
    for target in (running, stopped):
        types = {p.name for p in target.iterdir()}
        assert "type=chat.message" in types and "type=learning.assessment_submitted" in types
        rows = duckdb.sql(
            f"SELECT count(*), count(DISTINCT seq) FROM read_parquet('{target}/**/*.parquet')"
        ).fetchall()
        assert rows == [(500, 500)]
    out = await asyncio.to_thread(cli, stack, "export", "--parquet", str(stopped))
    assert out.returncode == 1 and "not empty" in out.stderr


async def test_a_deleted_consumer_is_re_created_from_the_checkpoint(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    stack: Stack = await make_stack(chat=False, gateways=0)
    await start_analytics(stack, nc)
    contexts = [ctx()]
    await _traffic(nc, contexts, 100)
    await stored(nc, 100)
    await caught_up(nc, stack)
    await nc.jetstream().delete_consumer(subjects.EVENTS_STREAM, "analytics")
    await _traffic(nc, contexts, 50, seed=5)
    await stored(nc, 150)
    assert await caught_up(nc, stack) == 150
    counts = await rpc_query(nc, "SELECT count(*), count(DISTINCT seq) FROM events")
    assert counts.rows == [[150, 150]]
