"""Analytics end to end: live metric updates over real sockets, HTTP ingest, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from shared import subjects
from shared.timefmt import now_ms
from tests.conftest import T
from tests.helpers import Client, Stack, token
from tests.integration.analytics_support import (
    caught_up,
    ctx,
    rpc_current,
    rpc_query,
    start_analytics,
    update_where,
    watch,
)

pytestmark = pytest.mark.integration


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


async def test_an_open_collaboration_socket_is_online_before_it_joins_a_session(
    make_stack: Callable[..., Any], nc: NATS
) -> None:
    stack: Stack = await make_stack(services=["collaboration"])
    await start_analytics(stack, nc)
    c = ctx()
    dash = await watch(stack, c, ["engagement"])
    url = stack.url("/api/collaboration/ws", token=token("carol", c), contextId=c)
    editor = await Client.connect(url)
    await editor.expect("connected")
    await update_where(dash, "engagement", lambda v: v["onlineUsers"] == 1)  # no session yet
    second = await Client.connect(url)  # a second tab, then a session: still one user
    await second.expect("connected")
    await second.request(
        {"type": "join_session", "id": "j", "data": {"sessionId": "doc"}}, "session_joined"
    )
    await editor.close()
    await second.close()
    await update_where(dash, "engagement", lambda v: v["onlineUsers"] == 0)
    assert (await rpc_current(nc, c)).values[c]["engagement"]["onlineUsers"] == 0
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
