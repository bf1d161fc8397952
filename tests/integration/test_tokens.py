"""Every forged, stale or misdirected token is refused the same way on every endpoint.

WebSocket endpoints: an ``error`` frame, then close 4401 (not a valid token) or 4403 (a valid
token for another context, or a role the endpoint does not allow), the close reason saying what
the error frame says. ``POST /api/analytics/events``: 401 or 403 in the project's error shape.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.helpers import SECRET, Client, Stack

pytestmark = pytest.mark.integration

ISS, AUD = "https://lms.example", "atomic-guide"
ENDPOINTS = ["/api/chat/ws", "/api/analytics/ws", "/api/collaboration/ws"]


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "u1",
        "name": "U One",
        "context_id": "c1",
        "roles": ["instructor"],  # allowed everywhere, the POST included
        "exp": int(time.time()) + 600,
        "iss": ISS,
        "aud": AUD,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs(c: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(c, key, algorithm=alg)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(c: dict[str, Any]) -> str:
    head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{_b64(json.dumps(c).encode())}."


def hmac_with(key: bytes, c: dict[str, Any]) -> str:
    """HS256 signed with ``key`` by hand: PyJWT refuses a PEM as an HMAC key, an attacker won't."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(c).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def forged_signature() -> str:
    good = hs(claims())
    head, body, sig = good.split(".")
    return f"{head}.{body}.{sig[::-1]}"


# (token, expected close, expected text)
CASES: dict[str, tuple[Callable[[], str], int, str]] = {
    "forged-signature": (forged_signature, 4401, "invalid token"),
    "alg-none": (lambda: unsigned(claims()), 4401, "invalid token"),
    "wrong-secret": (lambda: hs(claims(), key="not-the-secret-" * 3), 4401, "invalid token"),
    "alg-not-allowed": (lambda: hs(claims(), alg="HS512"), 4401, "invalid token"),
    "expired": (lambda: hs(claims(exp=int(time.time()) - 5)), 4401, "token expired"),
    "not-yet-valid": (lambda: hs(claims(nbf=int(time.time()) + 300)), 4401, "token not yet valid"),
    "wrong-aud": (lambda: hs(claims(aud="someone-else")), 4401, "invalid token"),
    "wrong-iss": (lambda: hs(claims(iss="https://evil.example")), 4401, "invalid token"),
    "no-exp": (lambda: hs(claims(exp=None)), 4401, "invalid token"),
    "no-sub": (lambda: hs(claims(sub=None)), 4401, "invalid token"),
    "garbage": (lambda: "not.a.jwt", 4401, "invalid token"),
    "wrong-context": (
        lambda: hs(claims(context_id="c2")),
        4403,
        "token does not allow this context",
    ),
}


@pytest.fixture
async def istack(make_stack: Callable[..., Any]) -> Stack:
    stack: Stack = await make_stack(env={"AG_JWT_ISSUER": ISS, "AG_JWT_AUDIENCE": AUD})
    return stack


async def refused(url: str, frame: dict[str, Any] | None) -> tuple[int | None, str, str]:
    """(close code, close reason, error text) for one connection attempt."""
    c = await Client.connect(url)
    if frame is not None:
        await c.send(frame)
    code = await c.closed()
    errors = [f for f in c.seen if f["type"] == "error"]
    assert len(errors) == 1, c.seen
    assert not [f for f in c.seen if f["type"] == "connected"]
    return code, c.ws.close_reason or "", errors[0]["error"]


async def test_bad_tokens_are_refused_on_every_endpoint_both_ways(istack: Stack) -> None:
    for case, (make, close, text) in CASES.items():
        tok = make()
        for path in ENDPOINTS:
            by_query = await refused(istack.url(path, token=tok, contextId="c1"), None)
            assert by_query == (close, text, text), (case, path, "query")
            auth = {"type": "auth", "token": tok, "contextId": "c1"}
            by_frame = await refused(istack.url(path), auth)
            assert by_frame == (close, text, text), (case, path, "auth frame")


async def test_a_valid_token_passes_the_same_checks(istack: Stack) -> None:
    for path in ENDPOINTS:
        c = await Client.connect(istack.url(path, token=hs(claims()), contextId="c1"))
        assert (await c.expect("connected"))["data"]["userId"] == "u1"
        await c.close()


async def test_a_missing_context_says_so(istack: Stack) -> None:
    for path in ENDPOINTS:
        got = await refused(istack.url(path, token=hs(claims())), None)
        assert got == (4403, "contextId is required", "contextId is required")


async def test_a_role_the_endpoint_does_not_allow_says_so(istack: Stack) -> None:
    learner = hs(claims(roles=["learner"]))
    got = await refused(istack.url("/api/analytics/ws", token=learner, contextId="c1"), None)
    assert got == (4403, "role not allowed on this endpoint", "role not allowed on this endpoint")


def post(stack: Stack, tok: str | None, context: str = "c1") -> tuple[int, dict[str, Any]]:
    body = {
        "type": "assessment_submitted",
        "contextId": context,
        "userId": "learner-1",
        "assessmentId": "q1",
        "score": 1,
        "maxScore": 2,
    }
    req = urllib.request.Request(
        stack.http("/api/analytics/events"), data=json.dumps(body).encode(), method="POST"
    )
    if tok is not None:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_bad_tokens_are_refused_on_the_ingest_endpoint(istack: Stack) -> None:
    for case, (make, close, _) in CASES.items():
        status, body = post(istack, make())
        expected = (403, "forbidden") if close == 4403 else (401, "unauthenticated")
        assert (status, body["code"]) == expected, case
        assert set(body) == {"code", "error"}, case
    assert post(istack, hs(claims()))[0] == 202


async def test_hs_rs_key_confusion_is_refused(
    make_stack: Callable[..., Any], tmp_path: Path
) -> None:
    """A server on RS256 must not accept an HS256 token 'signed' with its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    stack = await make_stack(
        env={"AG_JWT_ALGORITHMS": "RS256", "AG_JWT_PUBLIC_KEY": str(tmp_path / "pub.pem")}
    )
    good = jwt.encode(claims(iss=None, aud=None), key, algorithm="RS256")
    c = await Client.connect(stack.url(token=good, contextId="c1"))
    await c.expect("connected")
    await c.close()
    confused = hmac_with(pem, claims(iss=None, aud=None))
    for path in ENDPOINTS:
        got = await refused(stack.url(path, token=confused, contextId="c1"), None)
        assert got == (4401, "invalid token", "invalid token")
    status, body = post(stack, confused)
    assert (status, body["code"]) == (401, "unauthenticated")
