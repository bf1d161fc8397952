// Chat (chat.js, sequencer.js): every message delivered once, in seq order, across
// reconnects — recovery with lastSeq, holding until `recovered`, and paging back through
// `history` when the server's recovery was truncated.
import assert from "node:assert/strict";

import { ChatWebSocketClient, MAX_HISTORY_PAGE } from "../src/atomic-guide.js";
import { Sequencer } from "../src/sequencer.js";
import { BASE_SEED, rng } from "./random.js";
import { collect, iso, nextEvent, startClient, test } from "./fake-server.js";

function setup(t, options = {}) {
  return startClient(t, ChatWebSocketClient, options);
}

const message = (seq) => ({
  type: "message",
  data: { id: `m${seq}`, seq, content: `text ${seq}`, messageType: "text", author: { id: "u2", name: "Bo" }, timestamp: iso() },
});

const seqs = (frames) => frames.filter((f) => f.type === "message").map((f) => f.data.seq);

/**
 * Answer every `history` request on `ws` from `room` (seq -> message data) as the server
 * does: the newest `limit` messages strictly before `beforeSeq`, oldest first. Event driven:
 * a request is answered as soon as the client sends it. Returns the requests seen.
 */
function answerHistory(server, ws, room, { fail = null } = {}) {
  const requests = [];
  const answered = new Set();
  const stop = server.watch(() => {
    for (const frame of ws.frames) {
      if (frame.type !== "history" || answered.has(frame.id)) continue;
      answered.add(frame.id);
      requests.push(frame.data);
      if (fail) {
        ws.deliver({ type: "error", id: frame.id, data: { code: fail }, error: `history refused: ${fail}` });
        continue;
      }
      const { limit = 50, beforeSeq = Infinity } = frame.data;
      const older = [...room.keys()].filter((s) => s < beforeSeq).sort((a, b) => a - b);
      const page = older.slice(-limit);
      ws.deliver({ type: "history", id: frame.id, data: { messages: page.map((s) => room.get(s)), hasMore: older.length > page.length } });
    }
  });
  return { requests, stop };
}

async function connectFirst(server, client) {
  const connecting = client.connect();
  const ws = await server.nextSocket();
  const auth = await ws.accept();
  await connecting;
  return { ws, auth };
}

test("live messages are delivered as they come; lastSeq is the highest delivered seq", async (t) => {
  const { server, client } = setup(t);
  const messages = collect(client, "message");
  const { ws, auth } = await connectFirst(server, client);
  assert.equal("lastSeq" in auth, false, "a fresh client does not resume");
  assert.equal(client.lastSeq, null);
  ws.deliver(message(1));
  ws.deliver([message(2), message(3)]);
  ws.deliver(message(2)); // a duplicate is dropped
  assert.deepEqual(seqs(messages), [1, 2, 3]);
  assert.equal(client.lastSeq, 3);
});

test("after a reconnect: auth carries lastSeq; replay and live messages are held until `recovered`, then delivered once each, in order", async (t) => {
  const { server, client } = setup(t);
  const all = collect(client, "*");
  const { ws: ws1 } = await connectFirst(server, client);
  ws1.deliver([message(1), message(2), message(3)]);
  ws1.serverClose(1012, "stream cannot be kept whole");

  const ws2 = await server.nextSocket();
  const auth = await ws2.accept();
  assert.equal(auth.lastSeq, 3);
  const before = seqs(all).length;
  ws2.deliver(message(6)); // a live message overtakes the replay
  ws2.deliver([message(4), message(6), message(3)]);
  ws2.deliver(message(5));
  ws2.deliver(message(4));
  assert.equal(seqs(all).length, before, "nothing is delivered during recovery");
  ws2.deliver({ type: "recovered", data: { count: 3 } });

  assert.deepEqual(seqs(all), [1, 2, 3, 4, 5, 6]);
  const types = all.map((f) => f.type);
  assert.equal(types.at(-1), "recovered", "`recovered` comes after the released messages");
  assert.equal(client.lastSeq, 6);

  ws2.deliver([message(7), message(6), message(7), message(8)]);
  assert.deepEqual(seqs(all), [1, 2, 3, 4, 5, 6, 7, 8]);
});

test("query mode resumes with lastSeq in the URL", async (t) => {
  const { server, client } = setup(t, { authMode: "query" });
  const { ws } = await connectFirst(server, client);
  assert.equal(ws.query.has("lastSeq"), false);
  ws.deliver(message(41));
  ws.serverClose(1013, "slow consumer");
  const ws2 = await server.nextSocket();
  assert.equal(ws2.query.get("lastSeq"), "41");
});

test("a lastSeq option resumes the first connection too: older messages dropped, the rest held until recovered", async (t) => {
  const { server, client } = setup(t, { lastSeq: 10 });
  const messages = collect(client, "message");
  const { ws, auth } = await connectFirst(server, client);
  assert.equal(auth.lastSeq, 10);
  ws.deliver([message(9), message(12), message(10), message(11)]);
  assert.deepEqual(seqs(messages), []);
  ws.deliver({ type: "recovered", data: { count: 2 } });
  assert.deepEqual(seqs(messages), [11, 12]);
});

test("a drop during recovery recovers again from the same lastSeq; what was held is delivered once", async (t) => {
  const { server, client } = setup(t);
  const messages = collect(client, "message");
  const { ws: ws1 } = await connectFirst(server, client);
  ws1.deliver([message(1), message(2)]);
  ws1.serverClose(1012);
  const ws2 = await server.nextSocket();
  assert.equal((await ws2.accept()).lastSeq, 2);
  ws2.deliver([message(3), message(5)]);
  ws2.serverClose(1012); // before `recovered`
  const ws3 = await server.nextSocket();
  assert.equal((await ws3.accept()).lastSeq, 2, "nothing past 2 was delivered");
  ws3.deliver([message(3), message(4), message(5), { type: "recovered", data: { count: 3 } }]);
  assert.deepEqual(seqs(messages), [1, 2, 3, 4, 5]);
});

test("truncated recovery pages back with `history` (beforeSeq) until the gap is filled, then delivers in order", async (t) => {
  const { server, client } = setup(t, { historyPageSize: 4 });
  const all = collect(client, "*");
  const room = new Map(Array.from({ length: 31 }, (_, i) => [i + 1, message(i + 1).data]));
  const { ws: ws1 } = await connectFirst(server, client);
  ws1.deliver([1, 2, 3, 4, 5].map(message));
  ws1.serverClose(1012);

  const ws2 = await server.nextSocket();
  assert.equal((await ws2.accept()).lastSeq, 5);
  ws2.deliver([message(30), message(29)]); // live, held
  const recovered = nextEvent(client, "recovered");
  const history = answerHistory(server, ws2, room);
  ws2.deliver({ type: "recovered", data: { count: 0, truncated: true } });
  ws2.deliver(message(31)); // live during the gap fill
  await recovered;
  history.stop();

  assert.deepEqual(
    seqs(all),
    Array.from({ length: 31 }, (_, i) => i + 1),
    "6..31 released once each, in order, after 1..5",
  );
  assert.equal(all.at(-1).type, "recovered");
  assert.deepEqual(all.at(-1).data, { count: 0, truncated: true });
  assert.ok(history.requests.length >= 2, "paged more than once");
  for (const request of history.requests) assert.equal(request.limit, 4);
  assert.equal(history.requests[0].beforeSeq, 29, "starts below the oldest held message");
  const cursors = history.requests.map((r) => r.beforeSeq);
  assert.deepEqual(
    cursors,
    [...cursors].sort((a, b) => b - a),
    "each page is older than the one before",
  );
  const last = history.requests.at(-1).beforeSeq;
  assert.ok(last > 6 && last <= 6 + 4, `the last page reaches lastSeq + 1 = 6 and no page lies wholly below it (last beforeSeq ${last})`);
  assert.equal(client.lastSeq, 31);
});

test("truncated recovery with nothing held pages back from the newest message", async (t) => {
  const { server, client } = setup(t, { lastSeq: 2 });
  const messages = collect(client, "message");
  const room = new Map([1, 2, 3, 4, 5, 6, 7].map((s) => [s, message(s).data]));
  const { ws } = await connectFirst(server, client);
  const history = answerHistory(server, ws, room);
  const recovered = nextEvent(client, "recovered");
  ws.deliver({ type: "recovered", data: { count: 0, truncated: true } });
  await recovered;
  history.stop();
  assert.equal("beforeSeq" in history.requests[0], false);
  assert.equal(history.requests[0].limit, MAX_HISTORY_PAGE);
  assert.deepEqual(seqs(messages), [3, 4, 5, 6, 7]);
});

test("a failed gap fill still releases what arrived, then `recovered` (and logs a warning)", async (t) => {
  const { server, client, logger } = setup(t, { lastSeq: 2 });
  const all = collect(client, "*");
  const { ws } = await connectFirst(server, client);
  ws.deliver([message(50), message(49)]);
  const history = answerHistory(server, ws, new Map(), { fail: "forbidden" });
  const recovered = nextEvent(client, "recovered");
  ws.deliver({ type: "recovered", data: { count: 0, truncated: true } });
  await recovered;
  history.stop();
  assert.deepEqual(seqs(all), [49, 50]);
  assert.equal(all.at(-1).type, "recovered");
  assert.ok(logger.records.some((r) => r.level === "warn" && String(r.args[0]).includes("gap")));
});

test("sendMessage resolves with the ack; history() and typing() send the protocol's frames", async (t) => {
  const { server, client } = setup(t);
  const { ws } = await connectFirst(server, client);
  const sending = client.sendMessage("**hi**", { messageType: "markdown", id: "msg-1" });
  const frame = await ws.expect("message");
  assert.deepEqual(frame, { type: "message", id: "msg-1", data: { content: "**hi**", messageType: "markdown" } });
  ws.deliver({ type: "ack", id: "msg-1", data: { messageId: "m1", seq: 1 } });
  assert.deepEqual(await sending, { messageId: "m1", seq: 1 });

  const page = client.history({ limit: 10, before: "2026-01-01T00:00:00.000Z", beforeSeq: 7 });
  const h = await ws.expect("history");
  assert.deepEqual(h.data, { limit: 10, before: "2026-01-01T00:00:00.000Z", beforeSeq: 7 });
  ws.deliver({ type: "history", id: h.id, data: { messages: [], hasMore: false } });
  assert.deepEqual(await page, { messages: [], hasMore: false });

  assert.equal(client.typing(true), true);
  const typing = await ws.expect("typing");
  assert.deepEqual(typing, { type: "typing", data: { isTyping: true } });
  assert.throws(() => new ChatWebSocketClient({ url: "ws://x", contextId: "c", token: "t", WebSocket: server.WebSocket, historyPageSize: 101 }), RangeError);
});

// --- the sequencer alone ------------------------------------------------------------------

test("Sequencer: random arrival orders with duplicates release each seq once, in order", () => {
  const random = rng(BASE_SEED).next;
  for (let round = 0; round < 200; round += 1) {
    const floor = Math.floor(random() * 5);
    const top = floor + 1 + Math.floor(random() * 20);
    const seq = new Sequencer(floor);
    seq.beginRecovery();
    const arrivals = [];
    for (let s = 1; s <= top; s += 1) for (let k = Math.floor(random() * 3); k >= 0; k -= 1) arrivals.push(s);
    for (let i = arrivals.length - 1; i > 0; i -= 1) {
      const j = Math.floor(random() * (i + 1));
      [arrivals[i], arrivals[j]] = [arrivals[j], arrivals[i]];
    }
    for (const s of arrivals) assert.deepEqual(seq.push({ type: "message", data: { seq: s } }), []);
    const released = seq.endRecovery().map((f) => f.data.seq);
    const expected = [];
    for (let s = floor + 1; s <= top; s += 1) expected.push(s);
    assert.deepEqual(released, expected, `round ${round}`);
    assert.equal(seq.lastSeq, top);
  }
});
