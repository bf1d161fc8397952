"""Authentication on the wire: bad tokens, contexts, expiry on live sockets, refresh."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.helpers import SECRET, Client, Stack, http_status, token

pytestmark = pytest.mark.integration


def raw_token(claims: dict, key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-jwt",
        raw_token({"sub": "u", "context_id": "c", "exp": time.time() + 600}, key="wrong-key" * 4),
        raw_token({"sub": "u", "context_id": "c"}),  # no exp
        raw_token({"context_id": "c", "exp": time.time() + 600}),  # no sub
        raw_token({"sub": "u", "context_id": "c", "exp": time.time() - 5}),  # expired
        raw_token({"sub": "u", "context_id": "c", "exp": time.time() + 600}, key="", alg="none"),
        raw_token({"sub": "u", "context_id": "c", "exp": time.time() + 600}, alg="HS512"),
    ],
    ids=["garbage", "bad-signature", "no-exp", "no-sub", "expired", "alg-none", "alg-not-allowed"],
)
async def test_invalid_tokens_close_4401_by_query_and_by_auth_frame(stack: Stack, bad: str) -> None:
    by_query = await Client.connect(stack.url(token=bad, contextId="c"))
    assert await by_query.closed() == 4401
    by_frame = await Client.connect(stack.url())
    await by_frame.send({"type": "auth", "token": bad, "contextId": "c"})
    assert await by_frame.closed() == 4401
    assert by_frame.seen and by_frame.seen[0]["data"]["code"] == "unauthenticated"


async def test_context_not_in_token_closes_4403(stack: Stack) -> None:
    c = await Client.connect(stack.url(token=token("u", "course-a"), contextId="course-b"))
    assert await c.closed() == 4403


async def test_lti_claims_grant_context_and_roles(stack: Stack) -> None:
    claims = {
        "sub": "lti-user",
        "name": "Lti User",
        "exp": time.time() + 600,
        "https://purl.imsglobal.org/spec/lti/claim/context": {"id": "lti-course"},
        "https://purl.imsglobal.org/spec/lti/claim/roles": [
            "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"
        ],
    }
    c = await Client.connect(stack.url(token=raw_token(claims), contextId="lti-course"))
    connected = await c.expect("connected")
    assert connected["data"]["roles"] == ["instructor"]
    assert connected["data"]["username"] == "Lti User"


async def test_no_auth_in_time_closes_4408(stack: Stack) -> None:
    c = await Client.connect(stack.url())  # AG_AUTH_TIMEOUT_S=2 in tests
    started = time.monotonic()
    assert await c.closed() == 4408
    assert time.monotonic() - started >= 1.5


async def test_token_expiry_on_a_live_socket_sends_token_expired_then_4401(stack: Stack) -> None:
    c = await Client.connect(stack.url(token=token("u", "c1", ttl=2), contextId="c1"))
    await c.expect("connected")
    err = await c.expect("error", timeout=6)
    assert err["data"]["code"] == "token_expired"
    assert await c.closed() == 4401


async def test_refresh_extends_the_session_past_the_first_expiry(stack: Stack) -> None:
    c = await Client.connect(stack.url(token=token("u", "c1", ttl=3), contextId="c1"))
    await c.expect("connected")
    refreshed = await c.request(
        {"type": "refresh", "id": "r1", "token": token("u", "c1", ttl=600)}, "refreshed"
    )
    assert refreshed["data"]["expiresAt"].endswith("Z")
    # The original token is now past its expiry: the socket must still answer.
    deadline = time.time() + 4
    while time.time() < deadline:
        await c.request({"type": "ping", "id": f"p{time.time()}"}, "pong")
        await c.ws.ping()  # a protocol ping too: wait on the pong, not a sleep
    assert c.ws.close_code is None
    assert not [f for f in c.seen if f["type"] == "error"]


async def test_one_sockets_refresh_leaves_the_others_expiry_alone(stack: Stack) -> None:
    """Every socket's expiry is kept under one gateway timer: refiling one must not move another."""
    a = await Client.connect(stack.url(token=token("a", "c1", ttl=2), contextId="c1"))
    b = await Client.connect(stack.url(token=token("b", "c1", ttl=2), contextId="c1"))
    await a.expect("connected")
    await b.expect("connected")
    await b.request({"type": "refresh", "id": "r", "token": token("b", "c1", ttl=600)}, "refreshed")
    err = await a.expect("error", timeout=6)
    assert err["data"]["code"] == "token_expired"
    assert await a.closed() == 4401
    assert (await b.request({"type": "ping", "id": "after"}, "pong"))["id"] == "after"
    assert b.ws.close_code is None


async def test_refresh_for_another_user_or_context_is_forbidden_and_old_token_stays(
    stack: Stack,
) -> None:
    c = await Client.connect(stack.url(token=token("u", "c1"), contextId="c1"))
    await c.expect("connected")
    other_user = await c.request(
        {"type": "refresh", "id": "r1", "data": {"token": token("v", "c1")}}, "error"
    )
    assert other_user["data"]["code"] == "forbidden"
    other_ctx = await c.request({"type": "refresh", "id": "r2", "token": token("u", "c2")}, "error")
    assert other_ctx["data"]["code"] == "forbidden"
    invalid = await c.request({"type": "refresh", "id": "r3", "token": "garbage"}, "error")
    assert invalid["data"]["code"] == "unauthenticated"
    assert (await c.request({"type": "ping", "id": "still"}, "pong"))["id"] == "still"


async def test_health_ready_and_metrics_endpoints(stack: Stack) -> None:
    assert http_status(stack.http("/healthz")) == 200
    assert http_status(stack.http("/readyz")) == 200
    c = await Client.connect(stack.url(token=token("m", "c1"), contextId="c1"))
    await c.expect("connected")
    await c.send("{oops")
    await c.expect("error")
    import urllib.request

    with urllib.request.urlopen(stack.http("/metrics")) as resp:
        text = resp.read().decode()
    assert 'ag_gateway_connections{endpoint="chat"} 1.0' in text
    assert 'ag_gateway_errors_total{code="invalid_json"} 1.0' in text
    assert "ag_gateway_frames_in_total" in text
    assert http_status(stack.http("/schema")) == 404  # no docs/debug endpoints by default


async def test_refresh_with_a_role_the_endpoint_does_not_allow_is_forbidden(make_stack) -> None:
    stack = await make_stack()
    c = await Client.connect(
        stack.url(
            "/api/analytics/ws", token=token("t", "c1", roles=("instructor",)), contextId="c1"
        )
    )
    await c.expect("connected")
    err = await c.request(
        {"type": "refresh", "id": "r", "token": token("t", "c1", roles=("learner",))}, "error"
    )
    assert err["data"]["code"] == "forbidden"
    assert (await c.request({"type": "ping", "id": "p"}, "pong"))["id"] == "p"


async def test_auth_frame_failure_error_carries_the_frame_id(stack: Stack) -> None:
    c = await Client.connect(stack.url())
    await c.send({"type": "auth", "id": "a1", "token": token("u", "c1"), "contextId": "c2"})
    assert await c.closed() == 4403
    assert c.seen[0]["id"] == "a1" and c.seen[0]["data"]["code"] == "forbidden"


def http_json(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_http_errors_answer_in_the_projects_shape(stack: Stack) -> None:
    assert http_json(stack.http("/nope")) == (
        404,
        {"code": "not_found", "error": "no such endpoint"},
    )
    status, body = http_json(stack.http("/api/analytics/events"))
    assert status == 405 and body["code"] == "invalid_message" and "POST" in body["error"]
    big = b"x" * (65536 + 1)
    status, body = http_json(stack.http("/api/analytics/events"), "POST", big)
    assert (status, body) == (413, {"code": "too_large", "error": "request body too large"})


async def test_a_browser_origin_that_is_not_allowed_is_refused_403_before_any_work(
    stack: Stack,
) -> None:
    """Default AG_ALLOWED_ORIGINS: the gateway's own origin and loopback origins; a page on
    another site can neither open a socket nor post events; no Origin (servers, SDKs) passes."""
    import websockets
    from websockets.exceptions import InvalidStatus

    c = "ctx-origin"
    url = stack.url(token=token("ann", c), contextId=c)
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url, origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert b'"forbidden"' in refused.value.response.body
    for origin in ("http://localhost:5173", "http://127.0.0.1:8080"):
        ok = await Client.connect(url, origin=origin)
        assert (await ok.recv())["type"] == "connected"
    body = b'{"events":[]}'
    events = stack.http("/api/analytics/events")
    status, answer = http_json(events, "POST", body, {"Origin": "https://evil.example"})
    assert (status, answer["code"]) == (403, "forbidden")
    status, answer = http_json(events, "POST", body)  # no Origin: on to the token check
    assert (status, answer["code"]) == (401, "unauthenticated")
