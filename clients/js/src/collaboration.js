// Collaboration (/api/collaboration/ws): shared plain-text documents. Edits apply to the
// local document at once and reach the server one at a time (see document.js for the OT
// state machine and its rebase policy). Positions count UTF-16 code units, as JavaScript
// strings do. join() resolves with a CollaborationDocument once the server's text is in.
import { Connection, newRequestId } from "./connection.js";
import { Desync, SharedDocument } from "./document.js";
import { del, diff, insert, transform } from "./ot.js";

/** Refusals after which a local edit is dropped (undone) rather than rebased and re-sent. */
const FATAL_EDIT_ERRORS = new Set(["forbidden", "invalid_message", "too_large", "not_found"]);

/** A cursor position moved past `ops` (it stays left of text inserted exactly at it). */
function shiftPosition(position, ops) {
  for (const op of ops) {
    const [moved] = transform(insert(position, "x"), op, true);
    position = moved ? moved.position : position;
  }
  return position;
}

export class CollaborationDocument {
  constructor(client, sessionId, role) {
    this.client = client;
    this.sessionId = sessionId;
    this.role = role;
    this.shared = null; // SharedDocument once the snapshot is in
    this.participants = new Map(); // userId -> {userId, username, role}
    this.cursors = new Map(); // userId -> {userId, position, selectionEnd}
    this.handlers = new Map();
    this.editId = null;
    this.snapshotId = null;
    this.syncWaiters = [];
    this.left = false;
    this.authors = new Map(); // version -> author of a remote edit not yet integrated
  }

  /** The local text: the server's plus local edits not yet acknowledged. */
  get text() {
    return this.shared?.text ?? "";
  }

  /** The server version `text` is based on. */
  get version() {
    return this.shared?.version ?? 0;
  }

  /** `change` ({ops, author, version, text}: remote edits, in local positions), `cursor`, `participants`, `error`. */
  on(event, handler) {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  emit(event, value) {
    for (const handler of [...(this.handlers.get(event) ?? [])]) {
      try {
        handler(value);
      } catch (err) {
        this.client.logger.error(`atomic-guide: document ${event} handler failed`, err);
      }
    }
  }

  insert(position, text) {
    if (text) this.edit(insert(position, text));
  }

  delete(position, length) {
    if (!(length >= 0)) throw new RangeError("length must be >= 0");
    if (length) this.edit(del(position, length));
  }

  /** Replace the whole local text with `text` as one delete and/or one insert (for textareas). */
  setText(text) {
    for (const op of diff(this.text, text)) this.edit(op);
  }

  /** Show our cursor to the others; dropped (false) while disconnected. */
  cursor(position, selectionEnd = null) {
    const data = { sessionId: this.sessionId, position };
    if (selectionEnd !== null && selectionEnd !== undefined) data.selectionEnd = selectionEnd;
    return this.client.sendNowait({ type: "cursor", data });
  }

  /** Resolves once every local edit is acknowledged and no resync is under way. */
  synced() {
    if (!this.shared || this.shared.synced) return Promise.resolve();
    return new Promise((resolve) => this.syncWaiters.push(resolve));
  }

  snapshot() {
    return this.client.send({ type: "snapshot", data: { sessionId: this.sessionId } });
  }

  leave() {
    return this.client.leave(this.sessionId);
  }

  edit(op) {
    if (this.left) throw new Error("this session was left");
    if (!this.shared) throw new Error("the session is not joined yet");
    if (this.role === "observer") throw new Error("observers may not edit");
    const next = this.shared.local(op); // RangeError if it does not fit the text
    this.moveCursors([op]);
    this.sendOp(next);
  }

  moveCursors(ops) {
    for (const cursor of this.cursors.values()) {
      cursor.position = shiftPosition(cursor.position, ops);
      if (cursor.selectionEnd !== null && cursor.selectionEnd !== undefined) cursor.selectionEnd = shiftPosition(cursor.selectionEnd, ops);
    }
  }

  sendOp(op) {
    if (op) {
      this.editId = newRequestId();
      const data = { sessionId: this.sessionId, operation: op.type, position: op.position, version: this.shared.version };
      if (op.type === "insert") data.content = op.text;
      else data.length = op.length;
      // Not bound to the socket: an unacknowledged edit is re-sent (same id, same base
      // version) after a reconnect, and the server acknowledges a duplicate without re-applying.
      this.client.request({ type: "edit", id: this.editId, data }, { counted: false }).catch(() => {});
    }
    this.updateSynced();
  }

  resync() {
    if (!this.shared || this.left) return;
    this.shared.beginResync();
    this.updateSynced();
    if (this.snapshotId !== null || !this.client.connected) return; // on its way, or the re-join resyncs
    this.snapshotId = newRequestId();
    this.client.request({ type: "snapshot", id: this.snapshotId, data: { sessionId: this.sessionId } }, { scoped: true, counted: false }).catch(() => {});
  }

  updateSynced() {
    if (!this.shared || this.shared.synced) for (const resolve of this.syncWaiters.splice(0)) resolve();
  }

  // --- frames, in arrival order (OT needs acks, edits and snapshots in server order) ---

  joined(data) {
    this.participants = new Map((data.participants ?? []).map((p) => [p.userId, p]));
    const { content, version } = data.document;
    if (!this.shared) {
      this.shared = new SharedDocument(content, version);
      this.shared.onRemote = (ops, v) => {
        // Also fires for edits that overtook our ack, when the ack integrates them.
        const author = this.authors.get(v) ?? null;
        this.authors.delete(v);
        this.moveCursors(ops);
        this.emit("change", { ops, author, version: v, text: this.shared.text });
      };
    }
    else if (this.shared.inflight !== null) this.resync(); // our edit is re-sent after this join
    else this.applyRebase(content, version);
    this.updateSynced();
    this.emit("participants", this.participants);
  }

  applyRebase(content, version) {
    this.authors.clear();
    const before = this.shared.text;
    this.sendOp(this.shared.rebase(content, version));
    if (this.shared.text !== before) this.emit("change", { ops: null, author: null, version, text: this.shared.text, resync: true });
  }

  remoteEdit(data) {
    const op = data.operation === "insert" ? insert(data.position, data.content ?? "") : del(data.position, data.length ?? 0);
    if (data.version > this.shared.version) this.authors.set(data.version, data.author);
    try {
      this.shared.remote(op, data.version); // reports through onRemote
    } catch (err) {
      if (!(err instanceof Desync)) throw err;
      this.client.logger.warn?.(`atomic-guide: resyncing: ${err.message}`);
      this.resync();
    }
  }

  replied(frame) {
    this.editId = null;
    if (frame.type === "ack") {
      try {
        this.sendOp(this.shared.ack(frame.data?.version));
      } catch (err) {
        if (!(err instanceof Desync)) throw err;
        this.client.logger.warn?.(`atomic-guide: resyncing after ack: ${err.message}`);
      }
    } else {
      this.shared.reject(!FATAL_EDIT_ERRORS.has(frame.data?.code));
      this.emit("error", frame);
    }
    if (this.shared.resyncing) this.resync();
  }

  snapshotReply(frame) {
    this.snapshotId = null;
    if (frame.type === "snapshot") {
      // else our edit's reply is still due (an `unavailable` retry): its arrival asks again
      if (this.shared.inflight === null) this.applyRebase(frame.data.content, frame.data.version);
    } else {
      this.client.logger.warn?.(`atomic-guide: snapshot for resync failed: ${frame.error}; retrying`);
      this.client.later(this.client.backoff.delay(1), () => this.resync());
    }
  }
}

export class CollaborationWebSocketClient extends Connection {
  static path = "/api/collaboration/ws";

  constructor(options = {}) {
    super(options);
    this.documents = new Map(); // sessionId -> CollaborationDocument
  }

  /** Join `sessionId`; resolves with its CollaborationDocument once the server's text is in. */
  async join(sessionId, { role = "participant" } = {}) {
    let doc = this.documents.get(sessionId);
    if (doc?.shared) return doc;
    if (!doc) this.documents.set(sessionId, (doc = new CollaborationDocument(this, sessionId, role)));
    try {
      await this.send({ type: "join_session", data: { sessionId, role } });
    } catch (err) {
      if (!doc.shared) this.documents.delete(sessionId);
      throw err;
    }
    return doc;
  }

  /** Leave `sessionId`; local edits not yet acknowledged are abandoned. */
  async leave(sessionId) {
    const doc = this.documents.get(sessionId);
    if (!doc) return;
    if (doc.editId) this.withdraw(doc.editId); // it must not be re-sent after we left
    doc.left = true;
    this.documents.delete(sessionId);
    for (const resolve of doc.syncWaiters.splice(0)) resolve();
    await this.send({ type: "leave_session", data: { sessionId } });
  }

  send(frame) {
    // The original API joined and left with raw frames: keep the documents in step.
    if (frame?.type === "join_session" && frame.data?.sessionId && !this.documents.has(frame.data.sessionId)) {
      const { sessionId, role = "participant" } = frame.data;
      this.documents.set(sessionId, new CollaborationDocument(this, sessionId, role));
    }
    return super.send(frame);
  }

  onOpen() {
    for (const doc of this.documents.values()) {
      doc.snapshotId = null; // it died with the old socket
      if (!doc.shared) continue; // its own join request is re-sent
      doc.shared.beginResync();
      doc.updateSynced();
      this.request({ type: "join_session", data: { sessionId: doc.sessionId, role: doc.role } }, { scoped: true, counted: false }).catch(() => {});
    }
  }

  docFor(data) {
    const sessionId = data?.sessionId;
    if (sessionId) return this.documents.get(sessionId);
    return this.documents.size === 1 ? [...this.documents.values()][0] : undefined;
  }

  onFrame(frame) {
    const { type, data, id } = frame;
    if (type === "session_joined") {
      this.docFor(data)?.joined(data);
    } else if (type === "edit") {
      const doc = this.docFor(data);
      if (doc?.shared) doc.remoteEdit(data);
    } else if ((type === "ack" || type === "error") && id != null) {
      for (const doc of this.documents.values()) {
        if (doc.shared && id === doc.editId) doc.replied(frame);
        else if (doc.shared && id === doc.snapshotId) doc.snapshotReply(frame);
      }
    } else if (type === "snapshot" && id != null) {
      for (const doc of this.documents.values()) if (doc.shared && id === doc.snapshotId) doc.snapshotReply(frame);
    } else if (type === "participant_joined" || type === "participant_left") {
      const doc = this.docFor(data);
      if (doc) {
        if (type === "participant_joined") doc.participants.set(data.userId, data);
        else {
          doc.participants.delete(data.userId);
          doc.cursors.delete(data.userId);
        }
        doc.emit("participants", doc.participants);
      }
    } else if (type === "cursor") {
      const doc = this.docFor(data);
      if (doc) {
        const cursor = { userId: data.userId, position: data.position, selectionEnd: data.selectionEnd ?? null };
        doc.cursors.set(data.userId, cursor);
        doc.emit("cursor", cursor);
      }
    }
    return [frame];
  }
}
