// The connection core (connection.js) against the scripted fake server: authentication,
// requests and replies, the bounded queue, reconnects and their close codes, heartbeat,
// token refresh, handlers and pacing.
import assert from "node:assert/strict";

import {
  AuthError,
  Backoff,
  ChatWebSocketClient,
  Connection,
  ConnectionClosed,
  Disconnected,
  ForbiddenError,
  QueueFull,
  ReconnectFailed,
  ServerError,
  TooLargeError,
  endpointUrl,
} from "../src/atomic-guide.js";
import { collect, FakeServer, jwt, nextEvent, startClient, stateReached, test } from "./fake-server.js";

const TOKEN = jwt();

/** Backoff that records every delay it hands out (and which attempt asked). */
class RecordingBackoff extends Backoff {
  constructor(options) {
    super(options);
    this.calls = [];
  }

  delay(attempt) {
    const value = super.delay(attempt);
    this.calls.push({ attempt, value });
    return value;
  }
}

/** A client of `Kind` on a fresh fake server; closed when the test ends. */
function setup(t, options = {}, Kind = Connection) {
  return startClient(t, Kind, { token: TOKEN, ...options });
}

/** Connect and accept the first socket; resolves with the socket. */
async function connected(server, client, data) {
  const connecting = client.connect();
  const ws = await server.nextSocket();
  await ws.accept(data);
  await connecting;
  return ws;
}

/** Make performance.now() (the client's monotonic clock) advanceable. */
function monotonicClock(t) {
  const real = performance.now.bind(performance);
  let skew = 0;
  t.mock.method(performance, "now", () => real() + skew);
  return { advance: (ms) => (skew += ms) };
}

/** A promise the test does not wait for: it may reject when the client closes at the end. */
const background = (promise) => promise.catch(() => {});

/** Let pending promise callbacks run (microtasks are flushed before setImmediate fires). */
const flush = () => new Promise((resolve) => setImmediate(resolve));

// --- authentication ---------------------------------------------------------------------

test("message auth: first frame is auth {token, contextId}, batch=1 in the URL, connect resolves with connected", async (t) => {
  const { server, client } = setup(t, { url: "http://gw.test" }, ChatWebSocketClient);
  const connecting = client.connect();
  const ws = await server.nextSocket();
  const url = new URL(ws.url);
  assert.equal(`${url.protocol}//${url.host}${url.pathname}`, "ws://gw.test/api/chat/ws");
  assert.equal(ws.query.get("batch"), "1");
  assert.equal(ws.query.has("token"), false);
  assert.equal(ws.query.has("contextId"), false);
  assert.equal(client.state, "connecting");

  const auth = await ws.accept({ connectionId: "conn-x" });
  assert.deepEqual(auth, { type: "auth", token: TOKEN, contextId: "c1" });
  const info = await connecting;
  assert.equal(info.connectionId, "conn-x");
  assert.equal(info.contextId, "c1");
  assert.equal(client.state, "connected");
  assert.equal(client.connected, true);
  assert.deepEqual(await client.connect(), info, "connect() once connected resolves at once");
  assert.equal(server.sockets.length, 1);
});

test("query auth: token and contextId ride in the URL (with batch=1), no auth frame", async (t) => {
  const { server, client } = setup(t, { url: "https://gw.test/custom/ws?x=1", authMode: "query" }, ChatWebSocketClient);
  const connecting = client.connect();
  const ws = await server.nextSocket();
  const url = new URL(ws.url);
  assert.equal(url.protocol, "wss:");
  assert.equal(url.pathname, "/custom/ws", "an explicit path is kept");
  assert.equal(ws.query.get("x"), "1");
  assert.equal(ws.query.get("token"), TOKEN);
  assert.equal(ws.query.get("contextId"), "c1");
  assert.equal(ws.query.get("batch"), "1");
  assert.equal(ws.query.has("lastSeq"), false);
  await ws.accept();
  await connecting;
  const sending = client.sendMessage("hi");
  const first = await ws.nextFrame({ pings: true });
  assert.equal(first.type, "message", "no auth frame in query mode");
  ws.deliver({ type: "ack", id: first.id, data: { messageId: "m1", seq: 1 } });
  assert.deepEqual(await sending, { messageId: "m1", seq: 1 });
});

test("batch: false leaves batch out of the URL", async (t) => {
  const { server, client } = setup(t, { batch: false, authMode: "query" });
  background(client.connect());
  const ws = await server.nextSocket();
  assert.equal(ws.query.has("batch"), false);
});

test("constructor refuses missing contextId, token, a bad authMode or no WebSocket", () => {
  const { WebSocket } = new FakeServer();
  assert.throws(() => new Connection({ url: "ws://x", token: "t", WebSocket }), TypeError);
  assert.throws(() => new Connection({ url: "ws://x", contextId: "c", WebSocket }), TypeError);
  assert.throws(() => new Connection({ url: "ws://x", contextId: "c", token: "t", authMode: "cookie", WebSocket }), TypeError);
  assert.throws(() => new Connection({ url: "ws://x", contextId: "c", token: "t", WebSocket: 42 }), TypeError);
});

test("endpointUrl: ws(s) scheme, endpoint path only when the URL has none", () => {
  assert.equal(endpointUrl("http://h:8080", "/api/chat/ws").href, "ws://h:8080/api/chat/ws");
  assert.equal(endpointUrl("https://h/", "/api/chat/ws").href, "wss://h/api/chat/ws");
  assert.equal(endpointUrl("wss://h/proxy/chat?a=b", "/api/chat/ws").href, "wss://h/proxy/chat?a=b");
  assert.equal(endpointUrl("ws://h", null).href, "ws://h/");
});

test("getToken is called (and awaited) before the first connection and before every reconnect", async (t) => {
  let calls = 0;
  const getToken = async () => `token-${++calls}`;
  const { server, client } = setup(t, { token: undefined, getToken });
  const ws1 = await connected(server, client);
  assert.equal(ws1.frames[0].token, "token-1");
  assert.equal(calls, 1);

  ws1.serverClose(1012, "restart");
  const ws2 = await server.nextSocket(1);
  const auth2 = await ws2.accept();
  assert.equal(auth2.token, "token-2");
  ws2.serverClose(1006);
  const ws3 = await server.nextSocket(2);
  assert.equal((await ws3.accept()).token, "token-3");
  assert.equal(calls, 3);
});

test("query mode puts the fresh token of every attempt in the URL", async (t) => {
  let calls = 0;
  const { server, client } = setup(t, { token: undefined, getToken: () => `q-${++calls}`, authMode: "query" });
  await connected(server, client);
  server.sockets[0].serverClose(1013);
  const ws2 = await server.nextSocket(1);
  assert.equal(server.sockets[0].query.get("token"), "q-1");
  assert.equal(ws2.query.get("token"), "q-2");
});

// --- requests ---------------------------------------------------------------------------

test("send() resolves with the reply's data; replies correlate by id, even out of order and batched", async (t) => {
  const { server, client } = setup(t);
  const ws = await connected(server, client);
  const first = client.send({ type: "history", data: { limit: 5 } });
  const second = client.send({ type: "subscribe", data: { metrics: ["activity"] } });
  const f1 = await ws.expect("history");
  const f2 = await ws.expect("subscribe");
  assert.match(f1.id, /^[0-9a-f]{32}$/, "automatic ids are 32 hex digits");
  assert.match(f2.id, /^[0-9a-f]{32}$/);
  assert.notEqual(f1.id, f2.id);
  assert.deepEqual(f1.data, { limit: 5 });
  assert.equal(client.pendingCount, 2);

  ws.deliver([
    { type: "subscribed", id: f2.id, data: { metrics: ["activity"] } },
    { type: "history", id: f1.id, data: { messages: [], hasMore: false } },
  ]);
  assert.deepEqual(await first, { messages: [], hasMore: false });
  assert.deepEqual(await second, { metrics: ["activity"] });
  assert.equal(client.pendingCount, 0);
});

test("a caller's own id is used as is", async (t) => {
  const { server, client } = setup(t);
  const ws = await connected(server, client);
  const reply = client.send({ type: "message", id: "my-id-1", data: { content: "x" } });
  const frame = await ws.expect("message");
  assert.equal(frame.id, "my-id-1");
  // A broadcast carrying the same id is not a reply and settles nothing.
  ws.deliver({ type: "message", id: "my-id-1", data: { seq: 1 } });
  ws.deliver({ type: "ack", id: "my-id-1", data: { messageId: "m", seq: 1 } });
  assert.deepEqual(await reply, { messageId: "m", seq: 1 });
});

test("an error reply rejects that request with ServerError(code, message); the others are untouched", async (t) => {
  const { server, client } = setup(t);
  const ws = await connected(server, client);
  const bad = client.send({ type: "message", data: { content: "" } });
  const good = client.send({ type: "message", data: { content: "ok" } });
  const fBad = await ws.expect("message");
  const fGood = await ws.expect("message");
  ws.deliver({ type: "error", id: fBad.id, data: { code: "invalid_message" }, error: "content must not be empty" });
  const err = await bad.then(
    () => assert.fail("should reject"),
    (e) => e,
  );
  assert.ok(err instanceof ServerError);
  assert.equal(err.code, "invalid_message");
  assert.equal(err.message, "content must not be empty");
  assert.equal(err.id, fBad.id);
  assert.deepEqual(err.data, { code: "invalid_message" });
  assert.equal(client.pendingCount, 1);
  ws.deliver({ type: "ack", id: fGood.id, data: { messageId: "m2", seq: 2 } });
  assert.deepEqual(await good, { messageId: "m2", seq: 2 });
});

test("malformed requests are refused: no type, managed types, bad or duplicate ids", async (t) => {
  const { server, client } = setup(t);
  await connected(server, client);
  await assert.rejects(client.send({}), TypeError);
  await assert.rejects(client.send({ type: "auth", token: "x" }), TypeError);
  await assert.rejects(client.send({ type: "refresh", token: "x" }), TypeError);
  await assert.rejects(client.send({ type: "message", id: "x".repeat(65), data: {} }), TypeError);
  await assert.rejects(client.send({ type: "message", id: "", data: {} }), TypeError);
  background(client.send({ type: "message", id: "dup", data: {} }));
  await assert.rejects(client.send({ type: "message", id: "dup", data: {} }), TypeError);
  assert.equal(client.pendingCount, 1);
});

test("maxPending bounds waiting requests: QueueFull past it, a reply frees a slot", async (t) => {
  const { server, client } = setup(t, { maxPending: 2 });
  const ws = await connected(server, client);
  const a = client.send({ type: "history", data: {} });
  background(client.send({ type: "history", data: {} }));
  await assert.rejects(client.send({ type: "history", data: {} }), QueueFull);
  assert.equal(client.pendingCount, 2);
  assert.equal(await client.send({ type: "typing", data: { isTyping: true } }), true, "fire-and-forget is not queued");
  const fa = await ws.expect("history");
  await ws.expect("history");
  assert.equal((await ws.expect("typing")).data.isTyping, true);
  assert.equal(ws.frames.filter((f) => f.type === "history").length, 2, "the refused request was not sent");
  ws.deliver({ type: "history", id: fa.id, data: { messages: [], hasMore: false } });
  await a;
  const c = client.send({ type: "history", data: {} });
  const fc = await ws.expect("history");
  ws.deliver({ type: "history", id: fc.id, data: { messages: [], hasMore: true } });
  assert.deepEqual(await c, { messages: [], hasMore: true });
});

test("requests made before the connection wait for it; fire-and-forget frames are dropped", async (t) => {
  const { server, client } = setup(t);
  const connecting = client.connect();
  const reply = client.send({ type: "history", data: { limit: 1 } });
  assert.equal(await client.send({ type: "typing", data: { isTyping: true } }), false);
  assert.equal(await client.send({ type: "ping" }), false);
  const ws = await server.nextSocket();
  await ws.accept();
  await connecting;
  const frame = await ws.expect("history");
  ws.deliver({ type: "history", id: frame.id, data: { messages: [], hasMore: false } });
  await reply;
  assert.equal(ws.frames.some((f) => f.type === "typing"), false);
});

test("after a reconnect, unanswered requests are re-sent with the same id, in order", async (t) => {
  const { server, client } = setup(t);
  const ws1 = await connected(server, client);
  const r1 = client.send({ type: "message", data: { content: "one" } });
  const r2 = client.send({ type: "message", data: { content: "two" } });
  const f1 = await ws1.expect("message");
  const f2 = await ws1.expect("message");
  ws1.serverClose(1012, "stream restart");
  const ws2 = await server.nextSocket(1);
  await ws2.accept();
  const g1 = await ws2.expect("message");
  const g2 = await ws2.expect("message");
  assert.deepEqual(g1, f1, "the same frame, same id");
  assert.deepEqual(g2, f2);
  ws2.deliver([
    { type: "ack", id: f1.id, data: { messageId: "m1", seq: 1 } },
    { type: "ack", id: f2.id, data: { messageId: "m2", seq: 2 } },
  ]);
  assert.deepEqual(await Promise.all([r1, r2]), [
    { messageId: "m1", seq: 1 },
    { messageId: "m2", seq: 2 },
  ]);
});

test("requests sent while backing off go out on the next socket", async (t) => {
  const backoff = new Backoff({ base: 0.02, random: () => 0.5 });
  const { server, client } = setup(t, { backoff });
  const ws1 = await connected(server, client);
  ws1.serverClose(1008, "rate limited");
  await stateReached(client, "backing_off");
  const reply = client.send({ type: "history", data: {} });
  assert.equal(ws1.frames.filter((f) => f.type === "history").length, 0);
  const ws2 = await server.nextSocket(1);
  await ws2.accept();
  const frame = await ws2.expect("history");
  ws2.deliver({ type: "history", id: frame.id, data: { messages: [], hasMore: false } });
  await reply;
});

// --- close codes ------------------------------------------------------------------------

for (const [code, Kind] of [
  [1000, ConnectionClosed],
  [1009, TooLargeError],
  [4401, AuthError],
  [4403, ForbiddenError],
]) {
  test(`close ${code} ends the client with ${Kind.name}, no reconnect`, async (t) => {
    const { server, client } = setup(t);
    const ws = await connected(server, client);
    const states = collect(client, "statechange");
    const pending = client.send({ type: "history", data: {} });
    await ws.expect("history");
    ws.serverClose(code, "bye");
    const err = await pending.then(
      () => assert.fail("should reject"),
      (e) => e,
    );
    assert.equal(err.constructor, Kind);
    assert.equal(err.code, code);
    assert.equal(err.reason, "bye");
    assert.equal(client.state, "closed");
    assert.deepEqual(states.at(-1), { state: "closed", code, reason: "bye" });
    await assert.rejects(client.connect(), Kind);
    await assert.rejects(client.send({ type: "history", data: {} }), Kind);
    await flush();
    assert.equal(server.sockets.length, 1, "no new socket");
  });
}

test("4401 before connected: connect() rejects with AuthError; the error frame reaches handlers first", async (t) => {
  const { server, client } = setup(t);
  const errors = collect(client, "error");
  const connecting = client.connect();
  const ws = await server.nextSocket();
  ws.open();
  await ws.expect("auth");
  ws.deliver({ type: "error", data: { code: "unauthenticated" }, error: "bad token" });
  ws.serverClose(4401, "invalid token");
  const err = await connecting.then(
    () => assert.fail("should reject"),
    (e) => e,
  );
  assert.ok(err instanceof AuthError);
  assert.ok(err instanceof ConnectionClosed);
  assert.equal(err.code, 4401);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].data.code, "unauthenticated");
  assert.equal(server.sockets.length, 1);
});

test("4403 before connected: connect() rejects with ForbiddenError", async (t) => {
  const { server, client } = setup(t);
  const connecting = client.connect();
  const ws = await server.nextSocket();
  ws.open();
  ws.serverClose(4403, "context not allowed");
  await assert.rejects(connecting, ForbiddenError);
  assert.equal(client.state, "closed");
});

test("1001 after a socket lived >= 1 s: reconnect at once, no backoff delay asked", async (t) => {
  const clock = monotonicClock(t);
  const backoff = new RecordingBackoff({ base: 100, random: () => 0.5 }); // a backoff would wait 50 s
  const { server, client } = setup(t, { backoff });
  const ws1 = await connected(server, client);
  clock.advance(1500);
  ws1.serverClose(1001, "going away");
  const ws2 = await server.nextSocket(1);
  assert.deepEqual(backoff.calls, []);
  await ws2.accept();
  await stateReached(client, "connected");
});

test("1001 on a socket younger than 1 s counts as a failure and backs off", async (t) => {
  const backoff = new RecordingBackoff({ base: 0.02, random: () => 0.5 });
  const { server, client } = setup(t, { backoff });
  const ws1 = await connected(server, client);
  const backingOff = nextEvent(client, "statechange", (e) => e.state === "backing_off");
  ws1.serverClose(1001, "going away");
  assert.deepEqual(await backingOff, { state: "backing_off", code: 1001, reason: "going away" });
  assert.deepEqual(backoff.calls, [{ attempt: 0, value: 0.01 }]);
  await server.nextSocket(1);
});

for (const code of [1006, 1008, 1011, 1012, 1013, 4408]) {
  test(`close ${code} reconnects after a backoff delay`, async (t) => {
    const backoff = new RecordingBackoff({ base: 0.004, random: () => 0.5 });
    const { server, client } = setup(t, { backoff });
    const ws1 = await connected(server, client);
    ws1.serverClose(code);
    const ws2 = await server.nextSocket(1);
    assert.deepEqual(backoff.calls, [{ attempt: 0, value: 0.002 }]);
    await ws2.accept();
    await stateReached(client, "connected");
  });
}

test("consecutive failures grow the backoff attempt; a connected socket resets it", async (t) => {
  const backoff = new RecordingBackoff({ base: 0.001, random: () => 0.5 });
  const { server, client } = setup(t, { backoff });
  background(client.connect());
  for (let i = 0; i < 3; i += 1) {
    const ws = await server.nextSocket(i);
    ws.open();
    ws.serverClose(1006); // never connected
  }
  const ws4 = await server.nextSocket(3);
  await ws4.accept();
  ws4.serverClose(1012);
  await server.nextSocket(4);
  assert.deepEqual(
    backoff.calls.map((c) => c.attempt),
    [0, 1, 2, 0],
  );
  assert.deepEqual(
    backoff.calls.map((c) => c.value),
    [0.0005, 0.001, 0.002, 0.0005],
  );
});

test("maxAttempts failed retries in a row end the client with ReconnectFailed", async (t) => {
  const { server, client } = setup(t, { backoff: new Backoff({ maxAttempts: 2, random: () => 0 }) });
  const connecting = client.connect();
  for (let i = 0; i < 3; i += 1) {
    const ws = await server.nextSocket(i);
    ws.serverClose(1006);
  }
  const err = await connecting.then(
    () => assert.fail("should reject"),
    (e) => e,
  );
  assert.ok(err instanceof ReconnectFailed);
  assert.equal(client.state, "closed");
  await flush();
  assert.equal(server.sockets.length, 3);
});

test("a socket without `connected` within openTimeout is abandoned and replaced", async (t) => {
  const { server, client } = setup(t, { openTimeout: 0.05 });
  background(client.connect());
  const ws1 = await server.nextSocket();
  ws1.open();
  await ws1.expect("auth");
  const closing = await ws1.waitClosed();
  assert.equal(closing.code, 4000);
  const ws2 = await server.nextSocket(1);
  await ws2.accept();
  await stateReached(client, "connected");
});

test("close() closes the socket with 1000 and fails waiting requests with ConnectionClosed", async (t) => {
  const { server, client } = setup(t);
  const ws = await connected(server, client);
  const pending = client.send({ type: "history", data: {} });
  client.close();
  const err = await pending.then(
    () => assert.fail("should reject"),
    (e) => e,
  );
  assert.equal(err.constructor, ConnectionClosed);
  assert.equal(err.code, 1000);
  assert.equal(client.state, "closed");
  assert.deepEqual((await ws.waitClosed()).code, 1000);
  await assert.rejects(client.connect(), ConnectionClosed);
  await flush();
  assert.equal(server.sockets.length, 1);
});

// --- unavailable ------------------------------------------------------------------------

test("`unavailable` is retried with the same id; success after a retry resolves", async (t) => {
  const backoff = new RecordingBackoff({ base: 0.002, random: () => 0.5 });
  const { server, client } = setup(t, { backoff });
  const ws = await connected(server, client);
  const errors = collect(client, "error");
  const reply = client.send({ type: "message", data: { content: "x" } });
  const f1 = await ws.expect("message");
  ws.deliver({ type: "error", id: f1.id, data: { code: "unavailable" }, error: "chat service down" });
  const f2 = await ws.expect("message");
  assert.deepEqual(f2, f1);
  assert.deepEqual(backoff.calls, [{ attempt: 1, value: 0.002 }]);
  ws.deliver({ type: "ack", id: f1.id, data: { messageId: "m", seq: 9 } });
  assert.deepEqual(await reply, { messageId: "m", seq: 9 });
  assert.equal(errors.length, 0, "a retried error is not the application's business");
});

test("`unavailable` past retryUnavailable surfaces as ServerError('unavailable')", async (t) => {
  const { server, client } = setup(t, { retryUnavailable: 2 });
  const ws = await connected(server, client);
  const reply = client.send({ type: "message", data: { content: "x" } });
  const sent = [];
  for (let i = 0; i < 3; i += 1) {
    const frame = await ws.expect("message");
    sent.push(frame.id);
    ws.deliver({ type: "error", id: frame.id, data: { code: "unavailable" }, error: "down" });
  }
  const err = await reply.then(
    () => assert.fail("should reject"),
    (e) => e,
  );
  assert.ok(err instanceof ServerError);
  assert.equal(err.code, "unavailable");
  assert.equal(new Set(sent).size, 1, "always the same id");
  assert.equal(ws.frames.filter((f) => f.type === "message").length, 3);
});

// --- heartbeat --------------------------------------------------------------------------

test("heartbeat: a socket silent for pingInterval + pingTimeout is closed and replaced", async (t) => {
  const backoff = new Backoff({ random: () => 0 });
  const { server, client } = setup(t, { pingInterval: 0.05, pingTimeout: 0.05, backoff });
  const ws1 = await connected(server, client);
  await ws1.sentOfType("ping", 1);
  const closing = await ws1.waitClosed();
  assert.equal(closing.code, 4000);
  const ws2 = await server.nextSocket(1);
  await ws2.accept();
  await stateReached(client, "connected");
});

test("heartbeat: pings go out every interval and answered pings keep the socket", async (t) => {
  const { server, client } = setup(t, { pingInterval: 0.03, pingTimeout: 0.3 });
  const ws = await connected(server, client);
  for (let n = 1; n <= 4; n += 1) {
    const pings = await ws.sentOfType("ping", n);
    assert.deepEqual(pings.at(-1), { type: "ping" });
    ws.deliver({ type: "pong" });
  }
  assert.equal(ws.closed, false);
  assert.equal(ws.closeCalls.length, 0);
  assert.equal(server.sockets.length, 1);
  assert.equal(client.state, "connected");
});

// --- token refresh ----------------------------------------------------------------------

test("refresh: before exp (refreshMargin) a `refresh` frame carries getToken's fresher token; `refreshed` settles it", async (t) => {
  const first = jwt({ lifetime: 30 });
  const second = jwt({ lifetime: 3600 });
  let calls = 0;
  const getToken = () => (++calls === 1 ? first : second);
  const { server, client } = setup(t, { token: undefined, getToken, refreshMargin: 29.9 });
  const ws = await connected(server, client);
  const refresh = await ws.expect("refresh");
  assert.equal(refresh.token, second);
  assert.match(refresh.id, /^[0-9a-f]{32}$/);
  assert.equal(calls, 2);
  assert.equal(client.pendingCount, 0, "refresh is not counted against maxPending");
  ws.deliver({ type: "refreshed", id: refresh.id, data: { expiresAt: "2099-01-01T00:00:00.000Z" } });
  await flush(); // the reply settles the request; its awaiting callback adopts the token
  assert.equal(client.tokens.token, second);
  assert.equal(ws.frames.filter((f) => f.type === "refresh").length, 1, "the new token is not due for refresh");
});

test("refresh: without refreshMargin, once 80% of the lifetime has passed", async (t) => {
  const old = jwt({ lifetime: 30, age: 170 }); // 85 % of its 200 s gone: due at once (not at exp, 30 s away)
  const fresh = jwt({ lifetime: 3600 });
  let calls = 0;
  const { server, client } = setup(t, { token: undefined, getToken: () => (++calls === 1 ? old : fresh) });
  const ws = await connected(server, client);
  const refresh = await ws.expect("refresh");
  assert.equal(refresh.token, fresh);
  ws.deliver({ type: "refreshed", id: refresh.id, data: {} });
  assert.equal(client.state, "connected");
});

test("refresh: a token that is not fresher is not sent (and the client says so)", async (t) => {
  const same = jwt({ lifetime: 2, age: 98 });
  const { server, client, logger } = setup(t, { token: same });
  const ws = await connected(server, client);
  await logger.logged("warn", "no fresher token");
  assert.equal(ws.frames.some((f) => f.type === "refresh"), false);
});

// setTimeout takes at most 2^31-1 ms (24.8 days); browsers and Node fire a longer timer at
// once (Node: "TimeoutOverflowWarning ... set to 1"). A 40-day token's refresh is due in 32
// days: armed as one timer, it fires immediately, and every answered refresh re-arms it.
test("a long-lived token (40 days) arms no timer past setTimeout's 2^31-1 ms limit (it would refresh at once)", async (t) => {
  const realSetTimeout = globalThis.setTimeout;
  const delays = [];
  t.mock.method(globalThis, "setTimeout", (fn, ms, ...args) => {
    delays.push(ms);
    return realSetTimeout(fn, Math.min(ms, 2 ** 31 - 1), ...args);
  });
  let calls = 0;
  const getToken = () => jwt({ lifetime: 40 * 86400 + ++calls });
  const { server, client } = setup(t, { token: undefined, getToken });
  const ws = await connected(server, client);
  await flush();
  assert.ok(delays.length > 0);
  const longest = Math.max(...delays);
  assert.ok(longest <= 2 ** 31 - 1, `a timer of ${longest} ms was armed (refresh would fire after ~1 ms)`);
  assert.equal(ws.frames.some((f) => f.type === "refresh"), false);
  assert.equal(calls, 1);
});

test("refresh requests are bound to their socket: Disconnected when it drops", async (t) => {
  const { server, client } = setup(t);
  const ws = await connected(server, client);
  const scoped = client.request({ type: "refresh", token: jwt({ lifetime: 9999 }) }, { scoped: true, counted: false });
  await ws.expect("refresh");
  ws.serverClose(1012);
  await assert.rejects(scoped, Disconnected);
});

// --- handlers ---------------------------------------------------------------------------

test("on(type) and on('*') get frames (replies included); the returned function unsubscribes", async (t) => {
  const { server, client, logger } = setup(t);
  const all = collect(client, "*");
  const presence = [];
  const offPresence = client.on("presence", (f) => presence.push(f));
  client.on("presence", () => {
    throw new Error("a broken handler");
  });
  const ws = await connected(server, client);
  assert.equal(all[0].type, "connected");
  ws.deliver({ type: "presence", data: { users: [{ userId: "u1", username: "Ada" }] } });
  ws.deliver({ type: "something_new", data: { x: 1 } });
  const reply = client.send({ type: "history", data: {} });
  const f = await ws.expect("history");
  ws.deliver({ type: "history", id: f.id, data: { messages: [], hasMore: false } });
  await reply;
  assert.deepEqual(
    all.map((x) => x.type),
    ["connected", "presence", "something_new", "history"],
  );
  assert.equal(presence.length, 1);
  assert.ok(logger.records.some((r) => r.level === "error"), "the throwing handler was logged");

  offPresence();
  all.stop();
  ws.deliver({ type: "presence", data: { users: [] } });
  assert.equal(presence.length, 1);
  assert.equal(all.length, 4);
});

test("a batched message is handled frame by frame, in order; garbage is skipped", async (t) => {
  const { server, client, logger } = setup(t);
  const ws = await connected(server, client);
  const all = collect(client, "*");
  ws.deliver([
    { type: "user_joined", data: { userId: "u2" } },
    { type: "typing", data: { userId: "u2", isTyping: true } },
    { type: "user_left", data: { userId: "u2" } },
  ]);
  ws.deliverRaw("not json{");
  ws.deliverRaw(JSON.stringify([{ no: "type" }, null, { type: "pong", data: {} }]));
  assert.deepEqual(
    all.map((x) => x.type),
    ["user_joined", "typing", "user_left", "pong"],
  );
  assert.ok(logger.records.some((r) => r.level === "warn"));
});

test("statechange reports connecting, connected, backing_off (with the close code)", async (t) => {
  const { server, client } = setup(t);
  const states = collect(client, "statechange");
  const ws = await connected(server, client);
  ws.serverClose(1012, "restart");
  await server.nextSocket(1);
  assert.deepEqual(
    states.map((s) => s.state),
    ["connecting", "connected", "backing_off", "connecting"],
  );
  assert.equal(states[2].code, 1012);
});

// --- pacing -----------------------------------------------------------------------------

test("pacing: framesPerMinute 2 holds the third request; typing is dropped instead; both go once the window frees", async (t) => {
  const clock = monotonicClock(t);
  const { server, client } = setup(t, { framesPerMinute: 2 }, ChatWebSocketClient);
  const ws = await connected(server, client);
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const replies = [client.sendMessage("1"), client.sendMessage("2"), client.sendMessage("3")];
  const sentMessages = () => ws.frames.filter((f) => f.type === "message").map((f) => f.data.content);
  assert.deepEqual(sentMessages(), ["1", "2"], "the third waits");
  assert.equal(client.typing(true), false, "typing is dropped, not queued");
  assert.equal(client.pendingCount, 3);

  clock.advance(60_000);
  t.mock.timers.tick(60_000);
  assert.deepEqual(sentMessages(), ["1", "2", "3"]);
  assert.equal(ws.frames.some((f) => f.type === "typing"), false);
  t.mock.timers.reset();

  for (const frame of ws.frames.filter((f) => f.type === "message")) {
    ws.deliver({ type: "ack", id: frame.id, data: { messageId: frame.data.content, seq: Number(frame.data.content) } });
  }
  assert.deepEqual(
    (await Promise.all(replies)).map((r) => r.seq),
    [1, 2, 3],
  );
});

test("pacing: the window restarts with each socket (the server counts per connection)", async (t) => {
  const { server, client } = setup(t, { framesPerMinute: 2 });
  const ws1 = await connected(server, client);
  background(client.send({ type: "history", data: {} }));
  background(client.send({ type: "history", data: {} }));
  background(client.send({ type: "history", data: {} }));
  assert.equal(ws1.frames.filter((f) => f.type === "history").length, 2);
  ws1.serverClose(1012);
  const ws2 = await server.nextSocket(1);
  await ws2.accept();
  // all three are re-sent: two now, the third waits for the new window
  assert.equal(ws2.frames.filter((f) => f.type === "history").length, 2);
});
