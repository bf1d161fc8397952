"""The JavaScript client in a real headless Chromium against the real stack (two gateways,
chat, collaboration, analytics, nats-server): chat with presence, typing, acks, order and a
gateway restart; concurrent editing with emoji; an instructor watching activity move."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import T
from tests.helpers import Stack, token
from tests.integration.analytics_support import start_analytics
from tests.integration.browser_support import browser, client_page

__all__ = ["browser"]  # the fixture, imported for the tests of this module

CTX = "ctx-web"

# Starts a client of `kind` in the page as window.client, logging what it receives.
START = """
async ([kind, contextId, token]) => {
  const Kind = window.AG[kind];
  const client = new Kind({
    url: location.origin, contextId, token,
    backoff: new window.AG.Backoff({ base: 0.1, cap: 0.5 }),
  });
  window.client = client;
  window.log = { messages: [], typing: [], joined: [], presence: null, states: [], recovered: [] };
  client.on("message", (f) => log.messages.push(f.data));
  client.on("typing", (f) => log.typing.push(f.data));
  client.on("user_joined", (f) => log.joined.push(f.data.userId));
  client.on("presence", (f) => { log.presence = f.data.users.map((u) => u.userId).sort(); });
  client.on("recovered", (f) => log.recovered.push(f.data));
  client.on("statechange", (s) => log.states.push(s.state));
  return (await client.connect()).userId;
}
"""


@pytest.fixture
async def web_stack(make_stack: Callable[..., Any], nc: Any) -> Stack:
    stack: Stack = await make_stack(gateways=2, services=["collaboration"])
    await start_analytics(stack, nc)
    return stack


async def _seqs(page: Any) -> list[int]:
    result: list[int] = await page.evaluate("log.messages.map((m) => m.seq)")
    return result


async def test_two_pages_chat_through_a_gateway_restart(browser: Any, web_stack: Stack) -> None:
    alice = await client_page(browser, web_stack, gateway=0)
    bob = await client_page(browser, web_stack, gateway=1)
    assert await alice.evaluate(START, ["ChatWebSocketClient", CTX, token("alice", CTX)]) == "alice"
    assert await bob.evaluate(START, ["ChatWebSocketClient", CTX, token("bob", CTX)]) == "bob"

    # Presence: Alice sees Bob join (other gateway); Bob's presence has both of them.
    await alice.wait_for_function("log.joined.includes('bob')")
    assert await bob.evaluate("log.presence") == ["alice", "bob"]

    # Typing reaches the other page only.
    await bob.evaluate("client.typing(true)")
    await alice.wait_for_function("log.typing.some((t) => t.userId === 'bob' && t.isTyping)")
    assert await bob.evaluate("log.typing.length") == 0

    # Both talk at once: every ack names a seq, and both pages see one order.
    acks = await alice.evaluate(
        "Promise.all([1, 2, 3].map((i) => client.sendMessage('from alice ' + i + ' 😀')))"
    )
    acks += await bob.evaluate(
        "Promise.all([1, 2].map((i) => client.sendMessage('from bob ' + i)))"
    )
    assert sorted(a["seq"] for a in acks) == list(range(1, 6))
    for page in (alice, bob):
        await page.wait_for_function("log.messages.length >= 5")
    assert await _seqs(alice) == await _seqs(bob) == [1, 2, 3, 4, 5]
    contents = await bob.evaluate("log.messages.map((m) => m.content)")
    assert contents.count("from alice 1 😀") == 1

    # Alice's gateway goes away. Bob keeps talking (more than AG_RECOVERY_MAX=5, so her
    # recovery is truncated and pages through history); Alice queues two of her own.
    await web_stack.stop_gateway(0)
    await alice.wait_for_function("client.state !== 'connected'")
    # (A function returning nothing: evaluate() would otherwise wait for the promise.)
    await alice.evaluate(
        "() => { window.queued = Promise.all("
        "['queued 1', 'queued 2'].map((t) => client.sendMessage(t))); }"
    )
    for i in range(8):
        await bob.evaluate("(i) => client.sendMessage('while away ' + i)", i)
    await web_stack.restart_gateway(0)
    queued = await alice.evaluate("window.queued")
    assert len({q["seq"] for q in queued}) == 2

    for page in (alice, bob):
        await page.wait_for_function("log.messages.length >= 15", timeout=T(30) * 1000)
    assert await _seqs(alice) == await _seqs(bob) == list(range(1, 16))
    assert await alice.evaluate("log.recovered.length") == 1
    assert await alice.evaluate("log.states.includes('backing_off')")
    # The queued messages were sent once, with the ids they had before the restart.
    contents = await bob.evaluate("log.messages.map((m) => m.content)")
    assert contents.count("queued 1") == contents.count("queued 2") == 1
    assert alice.errors == [] and bob.errors == []


EDIT = """
async ([seed, rounds]) => {
  const doc = window.doc;
  let state = seed;
  const random = () => ((state = (state * 1103515245 + 12345) % 2147483648) / 2147483648);
  const pieces = ["a", "é", "😀", "👩‍🚀", "x y", "\\n"];
  const boundaries = (text) => {
    const out = [0];
    for (const ch of text) out.push(out[out.length - 1] + ch.length);
    return out;
  };
  for (let i = 0; i < rounds; i++) {
    const points = boundaries(doc.text);
    if (random() < 0.7 || points.length < 3) {
      const at = points[Math.floor(random() * points.length)];
      doc.insert(at, pieces[Math.floor(random() * pieces.length)]);
    } else {
      const a = Math.floor(random() * (points.length - 1));
      const b = Math.min(points.length - 1, a + 1 + Math.floor(random() * 3));
      doc.delete(points[a], points[b] - points[a]);
    }
    if (random() < 0.5) await new Promise((r) => setTimeout(r, random() * 5));
  }
  await doc.synced();
}
"""

JOIN = """
async ([contextId, token, sessionId]) => {
  const { CollaborationWebSocketClient } = window.AG;
  const client = new CollaborationWebSocketClient({ url: location.origin, contextId, token });
  await client.connect();
  window.doc = await client.join(sessionId);
  window.changes = 0;
  doc.on("change", () => { window.changes += 1; });
  return [doc.text, doc.version];
}
"""


async def test_two_pages_edit_one_document_with_emoji_and_converge(
    browser: Any, web_stack: Stack
) -> None:
    one = await client_page(browser, web_stack, gateway=0)
    two = await client_page(browser, web_stack, gateway=1)
    assert await one.evaluate(JOIN, [CTX, token("ann", CTX), "doc-e2e"]) == ["", 0]
    await two.evaluate(JOIN, [CTX, token("ben", CTX), "doc-e2e"])

    # Both edit at once, at random code-point boundaries, with astral characters.
    await asyncio.gather(one.evaluate(EDIT, [7, 60]), two.evaluate(EDIT, [11, 60]))
    server = await one.evaluate("doc.snapshot()")
    for page in (one, two):
        await page.wait_for_function(
            "(v) => doc.version >= v && doc.shared.synced", arg=server["version"]
        )
    text_one, text_two = await one.evaluate("doc.text"), await two.evaluate("doc.text")
    assert text_one == text_two == server["content"]
    assert server["version"] > 60  # most of 120 edits survived as their own versions
    assert await two.evaluate("window.changes") > 0  # remote edits arrived as `change` events
    assert "😀" in text_one or "👩‍🚀" in text_one or "é" in text_one
    assert one.errors == [] and two.errors == []


async def test_an_instructor_page_sees_activity_move_after_a_message(
    browser: Any, web_stack: Stack
) -> None:
    teacher = await client_page(browser, web_stack, gateway=0)
    learner = await client_page(browser, web_stack, gateway=1)
    instructor_token = token("ines", CTX, roles=("instructor",))
    await teacher.evaluate(START, ["AnalyticsWebSocketClient", CTX, instructor_token])
    assert await teacher.evaluate("client.subscribe(['activity']).then((r) => r.metrics)") == [
        "activity"
    ]
    await teacher.wait_for_function("client.values.has('activity')")
    before = await teacher.evaluate("client.values.get('activity').messages")

    await learner.evaluate(START, ["ChatWebSocketClient", CTX, token("lea", CTX)])
    await learner.evaluate("client.sendMessage('a question')")
    await teacher.wait_for_function(
        "(n) => client.values.get('activity').messages > n", arg=before, timeout=T(30) * 1000
    )
    # A learner may not open the analytics endpoint: the client ends with ForbiddenError.
    refused = await learner.evaluate(
        """async ([contextId, token]) => {
             const { AnalyticsWebSocketClient } = window.AG;
             const c = new AnalyticsWebSocketClient({ url: location.origin, contextId, token });
             try { await c.connect(); return "connected"; }
             catch (e) { return e.name + " " + e.code; }
           }""",
        [CTX, token("lea", CTX)],
    )
    assert refused == "ForbiddenError 4403"
