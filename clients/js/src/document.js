// The client side of editing one document, free of I/O (in the manner of ot.js).
//
// State: `confirmed` (the server's text at `version`), at most one operation in flight
// (sent, awaiting its ack) and a buffer of later local operations; the local text is
// confirmed + in-flight + buffer. Methods are the events that can happen; those that may
// release the next operation return it, for the caller to send with base `version`.
//
// The server sends a connection the edits applied before ours ahead of our ack; edits
// applied after ours may overtake the ack, so while one is in flight a remote edit beyond
// the next version is held until the ack fills the gap. Anything else that contradicts
// this throws Desync: the caller fetches a snapshot and calls rebase(). Rebase transforms
// unsent local operations against the difference between their base and the snapshot;
// none is dropped, except one the server refused for good (it is undone by the rebase).
import { apply, applyAll, diff, merge, transformLists } from "./ot.js";

const MAX_EARLY = 1000;

/**
 * Pieces of our in-flight delete that touch again (their split was undone by a remote
 * delete) become one, as the server merges them: the ack then names one version, not two.
 */
function mergeTouching(pieces) {
  const out = [];
  for (const piece of pieces) {
    const last = out[out.length - 1];
    if (last && last.type === "delete" && piece.type === "delete" && piece.position === last.position) {
      out[out.length - 1] = { type: "delete", position: last.position, length: last.length + piece.length };
    } else {
      out.push(piece);
    }
  }
  return out;
}

export class Desync extends Error {
  constructor(message) {
    super(message);
    this.name = "Desync";
  }
}

export class SharedDocument {
  constructor(content = "", version = 0) {
    this.confirmed = content;
    this.version = version;
    this.text = content;
    this.inflight = null; // list of ops (a delete may have split) or null
    this.buffer = [];
    this.early = new Map(); // version -> remote op that overtook our ack
    this.resyncing = false;
    this.onRemote = null; // (ops, version) => void: a remote edit reached `text`
  }

  /** Nothing local waits to reach the server. */
  get synced() {
    return this.inflight === null && this.buffer.length === 0 && !this.resyncing;
  }

  /** Apply a local edit; returns it when it may be sent now. Throws RangeError if it does not fit. */
  local(op) {
    this.text = apply(this.text, op);
    if (this.inflight === null && !this.resyncing) {
      this.inflight = [op];
      return op;
    }
    const merged = this.buffer.length ? merge(this.buffer[this.buffer.length - 1], op) : null;
    if (merged) this.buffer[this.buffer.length - 1] = merged;
    else this.buffer.push(op);
    return null;
  }

  /** A server `edit` that produced `version`; returns the ops applied to `text` (local positions). */
  remote(op, version) {
    if (this.resyncing || version <= this.version) return [];
    if (version !== this.version + 1) {
      if (this.inflight && this.early.size < MAX_EARLY) {
        this.early.set(version, op);
        return [];
      }
      throw new Desync(`expected version ${this.version + 1}, got ${version}`);
    }
    try {
      this.confirmed = apply(this.confirmed, op);
    } catch (err) {
      throw new Desync(`remote edit does not fit the confirmed text: ${err.message}`);
    }
    this.version = version;
    let ops = [op];
    if (this.inflight !== null) {
      [this.inflight, ops] = transformLists(this.inflight, ops, false);
      this.inflight = mergeTouching(this.inflight);
    }
    [this.buffer, ops] = transformLists(this.buffer, ops, false);
    this.text = applyAll(this.text, ops);
    if (ops.length) this.onRemote?.(ops, version);
    return ops;
  }

  /** The in-flight op was applied, its last part producing `version`; returns the next op to send. */
  ack(version) {
    if (this.inflight === null) return null;
    const pieces = this.inflight;
    this.inflight = null;
    try {
      this.confirmed = applyAll(this.confirmed, pieces);
    } catch (err) {
      this.resyncing = true;
      throw new Desync(`acked operation does not fit: ${err.message}`);
    }
    if (this.resyncing) return null;
    if (pieces.length === 0) {
      // It vanished (its text was deleted first); the ack's version says nothing about ours.
      this.applyEarly();
      return this.next();
    }
    const expected = this.version + pieces.length; // each surviving piece got its own version
    this.version = version;
    if (version !== expected) {
      this.resyncing = true;
      throw new Desync(`ack carries version ${version}, expected ${expected}`);
    }
    this.applyEarly();
    return this.next();
  }

  applyEarly() {
    const early = this.early;
    this.early = new Map();
    try {
      for (let op = early.get(this.version + 1); op !== undefined; op = early.get(this.version + 1)) {
        early.delete(this.version + 1);
        this.remote(op, this.version + 1);
      }
      if (early.size) throw new Desync(`versions ${[...early.keys()]} do not follow ${this.version}`);
    } catch (err) {
      this.resyncing = true;
      throw err;
    }
  }

  /** The server refused the in-flight op; a resync must follow. `keep`: rebase and re-send it. */
  reject(keep) {
    const pieces = this.inflight ?? [];
    this.inflight = null;
    this.early.clear();
    if (keep) {
      this.buffer.unshift(...pieces);
    } else {
      try {
        this.confirmed = applyAll(this.confirmed, pieces); // the snapshot diff then removes it
      } catch {
        /* the snapshot decides */
      }
    }
    this.resyncing = true;
  }

  beginResync() {
    this.resyncing = true;
    this.early.clear();
  }

  /** Adopt the server's `content` at `version`, rebasing unsent local ops; returns the next op. */
  rebase(content, version) {
    if (this.inflight !== null) throw new Error("rebase while an operation awaits its reply");
    this.early.clear();
    [this.buffer] = transformLists(this.buffer, diff(this.confirmed, content), false);
    this.confirmed = content;
    this.version = version;
    this.text = applyAll(content, this.buffer);
    this.resyncing = false;
    return this.next();
  }

  next() {
    if (this.inflight === null && this.buffer.length && !this.resyncing) {
      const op = this.buffer.shift();
      this.inflight = [op];
      return op;
    }
    return null;
  }
}
