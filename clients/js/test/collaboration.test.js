// Collaboration and analytics clients over the fake server: join, edits one at a time,
// remote edits, version_mismatch -> snapshot -> rebase, the re-join and re-send after a
// reconnect; analytics subscriptions renewed on a new socket.
import assert from "node:assert/strict";

import { AnalyticsWebSocketClient, CollaborationWebSocketClient, ot } from "../src/atomic-guide.js";
import { nextEvent, startClient, test } from "./fake-server.js";

const { insert } = ot;

function setup(t, Kind, options = {}) {
  return startClient(t, Kind, options, { roles: ["instructor"] });
}

async function connectAndJoin(server, client, { content = "", version = 0, role } = {}) {
  const connecting = client.connect();
  const ws = await server.nextSocket();
  await ws.accept();
  await connecting;
  const joining = client.join("s1", role ? { role } : undefined);
  const join = await ws.expect("join_session");
  ws.deliver({
    type: "session_joined",
    id: join.id,
    data: { sessionId: "s1", document: { content, version }, participants: [{ userId: "u1", username: "Ada", role: join.data.role }] },
  });
  const doc = await joining;
  return { ws, doc, join };
}

const editData = (op, version) =>
  op.type === "insert"
    ? { sessionId: "s1", operation: "insert", position: op.position, version, content: op.text }
    : { sessionId: "s1", operation: "delete", position: op.position, version, length: op.length };

test("join resolves with the server's text; local edits go one at a time, each against the version seen", async (t) => {
  const { server, client } = setup(t, CollaborationWebSocketClient);
  const { ws, doc, join } = await connectAndJoin(server, client, { content: "h😀", version: 3 });
  assert.deepEqual(join.data, { sessionId: "s1", role: "participant" });
  assert.equal(doc.text, "h😀");
  assert.equal(doc.version, 3);
  assert.deepEqual([...doc.participants.keys()], ["u1"]);

  doc.insert(3, "!");
  doc.insert(4, "?");
  doc.delete(0, 1);
  assert.equal(doc.text, "😀!?");
  const e1 = await ws.expect("edit");
  assert.deepEqual(e1.data, editData(insert(3, "!"), 3));
  assert.equal(ws.frames.filter((f) => f.type === "edit").length, 1, "the next waits for the ack");
  let synced = false;
  const syncing = doc.synced().then(() => (synced = true));

  ws.deliver({ type: "ack", id: e1.id, data: { version: 4, position: 3 } });
  const e2 = await ws.expect("edit");
  assert.deepEqual(e2.data, editData(insert(4, "?"), 4));
  ws.deliver({ type: "ack", id: e2.id, data: { version: 5, position: 4 } });
  const e3 = await ws.expect("edit");
  assert.deepEqual(e3.data, editData({ type: "delete", position: 0, length: 1 }, 5));
  assert.equal(synced, false);
  ws.deliver({ type: "ack", id: e3.id, data: { version: 6, position: 0 } });
  await syncing;
  assert.equal(doc.version, 6);
  assert.equal(doc.text, "😀!?");
});

test("a remote edit is transformed past our pending one and reported as a change (with its author)", async (t) => {
  const { server, client } = setup(t, CollaborationWebSocketClient);
  const { ws, doc } = await connectAndJoin(server, client, { content: "abc", version: 0 });
  doc.insert(3, "!");
  const e1 = await ws.expect("edit");
  const change = nextEvent({ on: (type, fn) => doc.on(type, fn) }, "change");
  ws.deliver({ type: "edit", data: { sessionId: "s1", operation: "insert", position: 0, content: ">", version: 1, author: { id: "u2", name: "Bo" } } });
  const event = await change;
  assert.deepEqual(event.ops, [insert(0, ">")]);
  assert.deepEqual(event.author, { id: "u2", name: "Bo" });
  assert.equal(event.version, 1);
  assert.equal(event.text, ">abc!");
  ws.deliver({ type: "ack", id: e1.id, data: { version: 2, position: 4 } });
  await doc.synced();
  assert.equal(doc.version, 2);
  assert.equal(doc.text, ">abc!");
});

test("version_mismatch: the client takes a snapshot, rebases and sends the edit again against the new version", async (t) => {
  const { server, client } = setup(t, CollaborationWebSocketClient);
  const { ws, doc } = await connectAndJoin(server, client, { content: "abc", version: 0 });
  doc.insert(0, "x");
  const e1 = await ws.expect("edit");
  const errored = nextEvent({ on: (type, fn) => doc.on(type, fn) }, "error");
  ws.deliver({ type: "error", id: e1.id, data: { code: "version_mismatch", version: 5 }, error: "version too old" });
  assert.equal((await errored).data.code, "version_mismatch");
  const snap = await ws.expect("snapshot");
  assert.deepEqual(snap.data, { sessionId: "s1" });
  ws.deliver({ type: "snapshot", id: snap.id, data: { sessionId: "s1", content: "abc!", version: 5 } });
  const e2 = await ws.expect("edit");
  assert.deepEqual(e2.data, editData(insert(0, "x"), 5));
  assert.equal(doc.text, "xabc!");
  ws.deliver({ type: "ack", id: e2.id, data: { version: 6, position: 0 } });
  await doc.synced();
  assert.equal(doc.version, 6);
});

test("after a reconnect: re-join first, the unacknowledged edit re-sent with its id and base, then a snapshot resync", async (t) => {
  const { server, client } = setup(t, CollaborationWebSocketClient);
  const { ws, doc } = await connectAndJoin(server, client, { content: "abc", version: 0 });
  doc.insert(3, "d");
  const e1 = await ws.expect("edit");
  ws.serverClose(1012);

  const ws2 = await server.nextSocket();
  await ws2.accept();
  const rejoin = await ws2.expect("join_session");
  assert.deepEqual(rejoin.data, { sessionId: "s1", role: "participant" });
  const again = await ws2.expect("edit");
  assert.deepEqual(again, e1, "same id, same base version: the server's dedup applies it once");
  // The server had applied it before the drop; someone else appended meanwhile.
  ws2.deliver({ type: "session_joined", id: rejoin.id, data: { sessionId: "s1", document: { content: "abcd.", version: 2 }, participants: [] } });
  ws2.deliver({ type: "ack", id: e1.id, data: { version: 1, position: 3 } });
  const snap = await ws2.expect("snapshot");
  ws2.deliver({ type: "snapshot", id: snap.id, data: { sessionId: "s1", content: "abcd.", version: 2 } });
  await doc.synced();
  assert.equal(doc.text, "abcd.");
  assert.equal(doc.version, 2);
  doc.insert(0, "<");
  assert.deepEqual((await ws2.expect("edit")).data, editData(insert(0, "<"), 2));
});

test("a refused edit is dropped, its error surfaces, and the text returns to the server's", async (t) => {
  const { server, client } = setup(t, CollaborationWebSocketClient);
  const { ws, doc } = await connectAndJoin(server, client, { content: "abc", version: 0 });
  doc.insert(1, "X");
  const e1 = await ws.expect("edit");
  ws.deliver({ type: "error", id: e1.id, data: { code: "forbidden" }, error: "no" });
  const snap = await ws.expect("snapshot");
  ws.deliver({ type: "snapshot", id: snap.id, data: { sessionId: "s1", content: "abc", version: 0 } });
  await doc.synced();
  assert.equal(doc.text, "abc");
  assert.equal(ws.frames.filter((f) => f.type === "edit").length, 1, "not re-sent");
});

test("observers may not edit; cursors are fire-and-forget", async (t) => {
  const { server, client } = setup(t, CollaborationWebSocketClient);
  const { ws, doc } = await connectAndJoin(server, client, { content: "abc", role: "observer" });
  assert.throws(() => doc.insert(0, "x"), /observers/);
  assert.equal(doc.cursor(2, 3), true);
  assert.deepEqual(await ws.expect("cursor"), { type: "cursor", data: { sessionId: "s1", position: 2, selectionEnd: 3 } });
  ws.serverClose(1012);
  assert.equal(doc.cursor(1), false, "dropped while disconnected");
});

test("analytics: subscribe tracks metrics and values; a new socket renews the subscription before anything else", async (t) => {
  const { server, client } = setup(t, AnalyticsWebSocketClient);
  const connecting = client.connect();
  const ws = await server.nextSocket();
  await ws.accept();
  await connecting;
  const subscribing = client.subscribe(["activity", "engagement"]);
  const sub = await ws.expect("subscribe");
  assert.deepEqual(sub.data, { metrics: ["activity", "engagement"] });
  ws.deliver([
    { type: "subscribed", id: sub.id, data: { metrics: ["activity", "engagement"] } },
    { type: "metric_update", data: { metric: "activity", value: { messages: 3 }, timestamp: "2026-01-05T09:30:00.123Z" } },
  ]);
  assert.deepEqual(await subscribing, { metrics: ["activity", "engagement"] });
  assert.deepEqual(client.values.get("activity"), { messages: 3 });

  const pending = client.unsubscribe(["engagement"]);
  const unsub = await ws.expect("unsubscribe");
  ws.serverClose(1001);
  const ws2 = await server.nextSocket();
  await ws2.accept();
  const renewed = await ws2.expect("subscribe");
  assert.deepEqual(new Set(renewed.data.metrics), new Set(["activity", "engagement"]));
  const resent = await ws2.expect("unsubscribe");
  assert.equal(resent.id, unsub.id);
  ws2.deliver([
    { type: "subscribed", id: renewed.id, data: { metrics: ["activity", "engagement"] } },
    { type: "unsubscribed", id: unsub.id, data: { metrics: ["engagement"] } },
  ]);
  await pending;
  assert.deepEqual([...client.metrics], ["activity"]);
});
