// SharedDocument (document.js): the client's OT state machine, alone and in a simulation
// with 2-4 clients and a central server model. The server model is written from the
// server's rules (docs/protocol.md and services/collaboration/ot.py), independently of
// ot.js: each incoming edit is transformed against the history since its base version, in
// order; of two inserts at one position the first applied stays left; a delete split by an
// insert becomes parts, right part first, and parts that end up touching are merged back
// (ot.transform_against); every resulting part gets a version of its own; a duplicate id is
// acknowledged again and not applied; a base version the server cannot transform from is
// version_mismatch.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Desync, SharedDocument, ot } from "../src/atomic-guide.js";
import { ALPHABET, BASE_SEED, hasLoneSurrogate, randomOp, randomText, rng, show } from "./random.js";

const { insert, del } = ot;

// --- the server model -----------------------------------------------------------------------

const isHigh = (c) => c >= 0xd800 && c <= 0xdbff;
const isLow = (c) => c >= 0xdc00 && c <= 0xdfff;
const sLen = (op) => (op.type === "insert" ? op.text.length : op.length);

/** The server refuses a position outside the text or between the halves of a pair. */
function sCheck(text, position) {
  if (!(Number.isInteger(position) && position >= 0 && position <= text.length)) throw new Error(`server: ${position} is outside ${show(text)}`);
  if (position > 0 && position < text.length && isHigh(text.charCodeAt(position - 1)) && isLow(text.charCodeAt(position))) {
    throw new Error(`server: ${position} splits a surrogate pair in ${show(text)}`);
  }
}

function sApply(text, op) {
  sCheck(text, op.position);
  if (op.type === "insert") return text.slice(0, op.position) + op.text + text.slice(op.position);
  sCheck(text, op.position + op.length);
  return text.slice(0, op.position) + text.slice(op.position + op.length);
}

/** An insert past one applied op (the op is later in the server's order: it loses ties). */
function sInsertPast(op, applied) {
  const p = op.position;
  if (applied.type === "insert") return p >= applied.position ? { ...op, position: p + applied.text.length } : op;
  if (p <= applied.position) return op;
  if (p >= applied.position + applied.length) return { ...op, position: p - applied.length };
  return { ...op, position: applied.position };
}

/** A delete past one applied op: 0, 1 or 2 parts (right part first). */
function sDeletePast(op, applied) {
  const s = op.position;
  const e = s + op.length;
  if (applied.type === "insert") {
    const q = applied.position;
    const n = applied.text.length;
    if (q >= e) return [op];
    if (q <= s) return [{ ...op, position: s + n }];
    return [
      { type: "delete", position: q + n, length: e - q },
      { type: "delete", position: s, length: q - s },
    ];
  }
  const t = applied.position;
  const f = t + applied.length;
  if (e <= t) return [op];
  if (s >= f) return [{ ...op, position: s - applied.length }];
  const rest = op.length - (Math.min(e, f) - Math.max(s, t));
  return rest ? [{ type: "delete", position: Math.min(s, t), length: rest }] : [];
}

class ServerModel {
  constructor(text, { keep = null, mergeTouching = true } = {}) {
    this.text = text;
    this.keep = keep; // how many past ops it can transform against
    this.mergeTouching = mergeTouching;
    this.history = [];
    this.seen = new Map(); // edit id -> ack version
  }

  get version() {
    return this.history.length;
  }

  /** `{mismatch}` | `{duplicate: ackVersion}` | `{applied: [[op, version], ...], ack}` */
  edit(op, base, id) {
    if (this.seen.has(id)) return { duplicate: this.seen.get(id) };
    if (base > this.version || (this.keep !== null && base < this.version - this.keep)) return { mismatch: this.version };
    const since = this.history.slice(base);
    let parts;
    if (op.type === "insert") {
      parts = [since.reduce(sInsertPast, op)];
    } else {
      parts = [op];
      for (const applied of since) parts = parts.flatMap((part) => sDeletePast(part, applied));
      if (this.mergeTouching) {
        const merged = [];
        for (const part of parts) {
          const last = merged.at(-1);
          if (last && part.position + part.length === last.position) merged[merged.length - 1] = { type: "delete", position: part.position, length: part.length + last.length };
          else merged.push(part);
        }
        parts = merged;
      }
    }
    const applied = [];
    for (const part of parts) {
      this.text = sApply(this.text, part);
      this.history.push(part);
      applied.push([part, this.version]);
    }
    this.seen.set(id, this.version);
    return { applied, ack: this.version };
  }
}

// The model must hold the server's own rules: a split delete's parts, right first, each with a version.
test("server model: a delete split by an earlier insert becomes two versions, right part first", () => {
  const server = new ServerModel("0123456789");
  server.edit({ type: "insert", position: 4, text: "XY" }, 0, "i");
  const result = server.edit({ type: "delete", position: 2, length: 6 }, 0, "d");
  assert.deepEqual(result.applied, [
    [{ type: "delete", position: 6, length: 4 }, 2],
    [{ type: "delete", position: 2, length: 2 }, 3],
  ]);
  assert.equal(server.text, "01XY89");
  assert.deepEqual(server.edit({ type: "delete", position: 2, length: 6 }, 0, "d"), { duplicate: 3 });
  // ...and merges parts that touch again once the insert that split them is gone
  const again = new ServerModel("0123456789");
  again.edit({ type: "insert", position: 4, text: "XY" }, 0, "i");
  again.edit({ type: "delete", position: 4, length: 2 }, 1, "i-undo");
  assert.deepEqual(again.edit({ type: "delete", position: 2, length: 6 }, 0, "d").applied, [[{ type: "delete", position: 2, length: 6 }, 3]]);
  assert.equal(again.text, "0189");
});

// --- SharedDocument alone -------------------------------------------------------------------

test("the first local edit is sent at once; later ones wait (typing runs merged)", () => {
  const doc = new SharedDocument("abc", 4);
  assert.deepEqual(doc.local(insert(3, "d")), insert(3, "d"));
  assert.equal(doc.local(insert(4, "e")), null);
  assert.equal(doc.local(insert(5, "😀")), null);
  assert.deepEqual(doc.buffer, [insert(4, "e😀")]);
  assert.equal(doc.text, "abcde😀");
  assert.equal(doc.synced, false);
  assert.deepEqual(doc.ack(5), insert(4, "e😀"));
  assert.equal(doc.version, 5);
  assert.equal(doc.ack(6), null);
  assert.equal(doc.synced, true);
  assert.equal(doc.confirmed, "abcde😀");
  assert.throws(() => doc.local(insert(8, "x")), RangeError, "a local edit must fit the local text");
  assert.throws(() => doc.local(insert(6, "x")), RangeError, "...and not split a pair");
});

test("remote edits are transformed past pending local ones (and reported through onRemote)", () => {
  const doc = new SharedDocument("hello", 0);
  const seen = [];
  doc.onRemote = (ops, version) => seen.push([ops, version]);
  doc.local(insert(5, "!")); // in flight
  doc.local(del(0, 1)); // buffered
  const ops = doc.remote(insert(0, ">> "), 1);
  assert.equal(doc.text, ">> ello!");
  assert.equal(doc.confirmed, ">> hello");
  assert.deepEqual(ops, [insert(0, ">> ")]);
  assert.deepEqual(seen, [[ops, 1]]);
  assert.deepEqual(doc.ack(2), del(3, 1), "the buffered delete was moved past the remote insert");
});

test("the ack of a split delete carries the last of its versions", () => {
  const doc = new SharedDocument("0123456789", 0);
  doc.local(del(2, 6));
  doc.remote(insert(4, "XY"), 1); // applied before ours: splits it
  assert.equal(doc.text, "01XY89");
  assert.equal(doc.inflight.length, 2);
  assert.equal(doc.ack(3), null); // two parts: versions 2 and 3
  assert.equal(doc.version, 3);
  assert.equal(doc.confirmed, "01XY89");
  assert.equal(doc.synced, true);
});

test("an edit that vanished is acked with the current version", () => {
  const doc = new SharedDocument("abcdef", 0);
  doc.local(del(2, 2));
  doc.remote(del(1, 4), 1);
  assert.deepEqual(doc.inflight, []);
  assert.equal(doc.ack(1), null);
  assert.equal(doc.version, 1);
  assert.equal(doc.text, "af");
  assert.equal(doc.synced, true);
});

test("a version gap or an unexpected ack version is a Desync", () => {
  const idle = new SharedDocument("abc", 0);
  assert.throws(() => idle.remote(insert(0, "x"), 2), Desync);
  const doc = new SharedDocument("abc", 0);
  doc.local(insert(0, "x"));
  assert.throws(() => doc.ack(5), Desync);
  assert.equal(doc.resyncing, true);
  assert.throws(() => new SharedDocument("abc", 0).remote(del(2, 5), 1), Desync, "a remote edit must fit");
});

test("remote edits that overtake our ack wait for it", () => {
  const doc = new SharedDocument("abc", 0);
  doc.local(insert(3, "!"));
  assert.deepEqual(doc.remote(insert(0, "2"), 2), [], "version 2 follows our edit (1): held");
  assert.equal(doc.text, "abc!");
  doc.ack(1);
  assert.equal(doc.version, 2);
  assert.equal(doc.text, "2abc!");
  assert.equal(doc.confirmed, "2abc!");
});

test("stale and duplicate remote versions are ignored", () => {
  const doc = new SharedDocument("abc", 3);
  assert.deepEqual(doc.remote(insert(0, "x"), 3), []);
  assert.deepEqual(doc.remote(insert(0, "x"), 1), []);
  assert.equal(doc.text, "abc");
});

test("version_mismatch: reject(keep=true) then rebase onto the snapshot re-sends the edit, transformed", () => {
  const doc = new SharedDocument("hello world", 0);
  doc.local(insert(11, "!")); // in flight
  doc.local(insert(0, "> ")); // buffered
  doc.reject(true);
  assert.equal(doc.resyncing, true);
  assert.equal(doc.next(), null, "nothing is sent during the resync");
  assert.equal(doc.local(del(2, 1)), null, "edits made during the resync wait");
  // the server's text meanwhile: someone replaced "world" with "there"
  const next = doc.rebase("hello there", 7);
  assert.equal(doc.version, 7);
  assert.equal(doc.resyncing, false);
  assert.equal(doc.text, "> ello there!");
  assert.deepEqual(next, insert(11, "!"), "the refused edit goes again, first");
  assert.deepEqual(doc.ack(8), insert(0, "> "), "then the edits made meanwhile, in order");
  assert.deepEqual(doc.ack(9), del(2, 1));
  assert.equal(doc.ack(10), null);
  assert.equal(doc.confirmed, "> ello there!");
  assert.equal(doc.text, "> ello there!");
  assert.equal(doc.synced, true);
});

test("a refused edit that cannot be kept is undone by the rebase", () => {
  const doc = new SharedDocument("abc", 0);
  doc.local(insert(1, "X"));
  doc.reject(false);
  assert.equal(doc.rebase("abc", 0), null);
  assert.equal(doc.text, "abc");
  assert.equal(doc.synced, true);
});

test("rebase while an edit awaits its reply is a bug", () => {
  const doc = new SharedDocument("", 0);
  doc.local(insert(0, "a"));
  assert.throws(() => doc.rebase("", 0));
});

// The server merges the parts of a split delete that touch again (transform_against's
// _merge_touching) and gives the merged delete ONE version. The client must count pieces
// the same way, or it takes a correct ack for a desync and throws its state away.
test("a split delete whose parts touch again is acked with one version: no desync", () => {
  const server = new ServerModel("0123456789");
  const doc = new SharedDocument("0123456789", 0);
  const sent = doc.local(del(2, 6)); // removes 234567
  const s1 = server.edit({ type: "insert", position: 4, text: "XY" }, 0, "other-1"); // someone types XY inside
  const s2 = server.edit({ type: "delete", position: 4, length: 2 }, 1, "other-2"); // ...and deletes it again
  const mine = server.edit(sent, 0, "mine");
  assert.equal(mine.applied.length, 1, "the server applies one merged delete");
  for (const [op, version] of [...s1.applied, ...s2.applied]) doc.remote(op, version);
  let next;
  assert.doesNotThrow(() => {
    next = doc.ack(mine.ack);
  }, "ack carries the version the server gave the merged delete");
  assert.equal(next, null);
  assert.equal(doc.version, server.version);
  assert.equal(doc.text, server.text);
  assert.equal(doc.synced, true);
});

// --- clients and server converge ------------------------------------------------------------

/**
 * One client driven like CollaborationDocument drives its SharedDocument, over FIFO links.
 * `down` carries, in server order, the edits of others and (unless lateAcks) our replies.
 * With lateAcks, replies travel in `replies` and later broadcasts may overtake an ack (as on
 * the real gateway); a reply waits for the broadcasts queued before it, and a snapshot reply
 * is never overtaken (the gateway holds the session's broadcasts until it is queued).
 */
class ClientModel {
  constructor(name, text) {
    this.name = name;
    this.doc = new SharedDocument(text, 0);
    this.up = [];
    this.down = [];
    this.replies = [];
    this.queued = 0;
    this.taken = 0;
    this.sent = null; // the unacknowledged edit: {op, base, id}
    this.snapshotPending = false;
    this.counter = 0;
    this.desyncs = 0;
    this.mismatches = 0;
    this.lastInsert = null; // the last local insert, for backspacing it
  }

  send(op) {
    if (!op) return;
    this.counter += 1;
    this.sent = { op, base: this.doc.version, id: `${this.name}-${this.counter}` };
    this.up.push({ kind: "edit", ...this.sent });
  }

  resync() {
    this.doc.beginResync();
    if (!this.snapshotPending) {
      this.snapshotPending = true;
      this.up.push({ kind: "snapshot" });
    }
  }

  guard(fn) {
    try {
      fn();
    } catch (err) {
      if (!(err instanceof Desync)) throw err;
      this.desyncs += 1;
      this.resync();
    }
  }

  receive(msg) {
    if (msg.kind === "edit") {
      this.guard(() => this.doc.remote(msg.op, msg.version));
    } else if (msg.kind === "ack") {
      this.sent = null;
      this.guard(() => this.send(this.doc.ack(msg.version)));
      if (this.doc.resyncing) this.resync();
    } else if (msg.kind === "mismatch") {
      this.sent = null;
      this.mismatches += 1;
      this.doc.reject(true);
      this.resync();
    } else if (msg.kind === "snapshot") {
      this.snapshotPending = false;
      if (this.doc.inflight === null) this.send(this.doc.rebase(msg.text, msg.version));
      // else: our edit's reply is still due; its arrival asks again (CollaborationDocument does this)
    }
  }

  push(msg) {
    this.down.push(msg);
    this.queued += 1;
  }

  reply(msg, late) {
    if (late) this.replies.push({ at: this.queued, blocks: msg.kind === "snapshot", msg });
    else this.push(msg);
  }

  canTake() {
    return this.down.length > 0 && !this.replies.some((r) => r.blocks && r.at <= this.taken);
  }

  take() {
    this.taken += 1;
    this.receive(this.down.shift());
  }

  replyReady() {
    return this.replies.length > 0 && this.replies[0].at <= this.taken;
  }

  takeReply() {
    this.receive(this.replies.shift().msg);
  }

  /** Lose everything on the wire; re-send the unacknowledged edit (same id, same base) and resync. */
  reconnect() {
    this.up.length = 0;
    this.taken += this.down.length;
    this.down.length = 0;
    this.replies.length = 0;
    this.snapshotPending = false;
    this.doc.beginResync();
    if (this.sent) this.up.push({ kind: "edit", ...this.sent });
    this.resync();
  }
}

function deliverUp(server, clients, i, lateAcks) {
  const client = clients[i];
  const msg = client.up.shift();
  if (msg.kind === "snapshot") {
    client.reply({ kind: "snapshot", text: server.text, version: server.version }, lateAcks);
    return;
  }
  const result = server.edit(msg.op, msg.base, msg.id);
  if (result.mismatch !== undefined) {
    client.reply({ kind: "mismatch", version: result.mismatch }, lateAcks);
    return;
  }
  if (result.duplicate !== undefined) {
    client.reply({ kind: "ack", version: result.duplicate }, lateAcks);
    return;
  }
  for (const [j, other] of clients.entries()) {
    if (j === i) continue;
    for (const [op, version] of result.applied) other.push({ kind: "edit", op, version });
  }
  client.reply({ kind: "ack", version: result.ack }, lateAcks);
}

/** One random scenario; returns {server, clients} after quiescing. */
function simulate(r, { keep, reconnects, lateAcks, nClients, steps, mergeTouching = true }) {
  const initial = randomText(r, 8);
  const server = new ServerModel(initial, { keep, mergeTouching });
  const clients = Array.from({ length: nClients }, (_, k) => new ClientModel(`c${k}`, initial));
  const actions = ["local", "local", "up", "down", "down", ...(reconnects ? ["reconnect"] : []), ...(lateAcks ? ["reply"] : [])];
  for (let step = 0; step < steps; step += 1) {
    const i = r.int(0, nClients - 1);
    const client = clients[i];
    const action = r.pick(actions);
    if (action === "local") {
      const last = client.lastInsert;
      let op;
      if (last && r.bool(0.3) && client.doc.text.startsWith(last.text, last.position)) {
        op = del(last.position, last.text.length); // typed, then backspaced
      } else {
        op = randomOp(r, client.doc.text, { alphabet: ALPHABET, maxDelete: 6 });
      }
      client.lastInsert = op.type === "insert" ? op : null;
      client.send(client.doc.local(op));
    }
    else if (action === "up" && client.up.length) deliverUp(server, clients, i, lateAcks);
    else if (action === "down" && client.canTake()) client.take();
    else if (action === "reply" && client.replyReady()) client.takeReply();
    else if (action === "reconnect") client.reconnect();
  }
  // Quiesce: deliver everything until no link carries anything.
  for (let guard = 0; clients.some((c) => c.up.length || c.down.length || c.replies.length); guard += 1) {
    assert.ok(guard < 10_000, "the system quiesces");
    for (const [i, client] of clients.entries()) {
      while (client.up.length) deliverUp(server, clients, i, lateAcks);
      while (client.down.length || client.replies.length) {
        if (client.replyReady()) client.takeReply();
        else client.take();
      }
    }
  }
  return { server, clients };
}

function scenarios(seed, count) {
  const r = rng(seed);
  return Array.from({ length: count }, (_, n) => ({
    n,
    keep: r.pick([null, null, 2]),
    reconnects: r.bool(0.3),
    lateAcks: r.bool(),
    nClients: r.int(2, 4),
    steps: r.int(0, 60),
    seed: (seed * 1000 + n) >>> 0,
  }));
}

test("random interleavings: 2-4 clients converge to the server's text and version (surrogate pairs, mismatches, reconnects)", () => {
  let mismatches = 0;
  let edits = 0;
  for (const scenario of scenarios(BASE_SEED, 400)) {
    const r = rng(scenario.seed);
    const { server, clients } = simulate(r, scenario);
    const ctx = `scenario ${show(scenario)} (AG_TEST_SEED=${BASE_SEED})`;
    edits += server.version;
    for (const client of clients) {
      mismatches += client.mismatches;
      assert.equal(client.doc.synced, true, `${ctx}: ${client.name} synced`);
      assert.equal(client.doc.text, server.text, `${ctx}: ${client.name} text`);
      assert.equal(client.doc.version, server.version, `${ctx}: ${client.name} version`);
      assert.equal(client.doc.confirmed, server.text, `${ctx}: ${client.name} confirmed`);
      assert.equal(hasLoneSurrogate(client.doc.text), false, `${ctx}: ${client.name} never split a pair`);
    }
  }
  assert.ok(mismatches > 20, `the version_mismatch path was exercised (${mismatches})`);
  assert.ok(edits > 2000, `enough edits were applied (${edits})`);
});

test("random interleavings against a conforming server need no resync (the client's ack-version bookkeeping matches)", () => {
  const failures = [];
  // Two clients and long runs: an in-flight delete, another client typing inside its range
  // and backspacing it before ours reaches the server, happens a few times per hundred runs.
  for (const scenario of scenarios(BASE_SEED + 7, 1000)) {
    const conforming = { ...scenario, keep: null, reconnects: false, nClients: 2, steps: scenario.steps * 5 };
    const { server, clients } = simulate(rng(scenario.seed), conforming);
    for (const client of clients) {
      assert.equal(client.doc.text, server.text);
      if (client.desyncs) failures.push(`${show(conforming)}: ${client.name} desynced ${client.desyncs}x`);
    }
  }
  assert.deepEqual(failures.slice(0, 3), [], `${failures.length} of 1000 scenarios took a correct ack for a desync`);
});
