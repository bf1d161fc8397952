// The connection core shared by the chat, analytics and collaboration clients: one logical
// session with one endpoint of one context, over as many WebSockets as it takes.
//
// Per socket: authenticate (first `auth` frame, or the URL), heartbeat (`ping` frames; a
// socket silent for pingInterval + pingTimeout is dead), refresh the token before `exp`,
// pace frames under the server's per-connection limit. When a socket ends, afterClose()
// decides from its close code: reconnect (full-jitter backoff; at once after a drain) or
// end the client with a typed error. Requests (frames that get a reply) stay in a bounded
// map until answered and are re-sent with the same `id` after a reconnect; the server's
// dedup window makes the re-send harmless. typing/cursor/ping are fire-and-forget: sent
// while connected, else dropped (a stale indicator is worse than none).
import { ConnectionClosed, Disconnected, QueueFull, ServerError } from "./errors.js";
import { Backoff, SlidingWindow, afterClose } from "./policy.js";
import { TokenClock } from "./token.js";

export const FIRE_AND_FORGET = new Set(["typing", "cursor", "ping"]);
/** Frames that answer a request and carry its `id` (broadcasts never settle a request). */
export const REPLY_TYPES = new Set(["ack", "error", "history", "snapshot", "subscribed", "unsubscribed", "refreshed", "session_joined", "session_left", "pong"]);
const MANAGED = new Set(["auth", "refresh"]);
/** Close code we use for a socket we give up on ourselves (heartbeat, open timeout). */
const CLOSE_LOCAL = 4000;
/** The longest delay setTimeout honours (2^31-1 ms), in seconds. */
const MAX_TIMER_S = 2147483;

const monotonic = () => performance.now() / 1000;
const wallClock = () => Date.now() / 1000;

export function newRequestId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID().replaceAll("-", "");
  return Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join("");
}

/** The endpoint URL: ws(s) scheme, the endpoint's path when `url` has none, same origin when omitted. */
export function endpointUrl(url, path) {
  const base = globalThis.location?.href;
  const parsed = new URL(url ?? "/", base);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (path && (parsed.pathname === "" || parsed.pathname === "/")) parsed.pathname = path;
  return parsed;
}

export class Connection {
  static path = null;

  /**
   * @param {object} options `url`, `contextId`, and `token` or `getToken` (sync or async,
   *   called before every connection attempt and when a refresh is due); see the README.
   */
  constructor(options = {}) {
    const {
      url,
      contextId,
      token,
      getToken,
      authMode = "message",
      batch = true,
      pingInterval = 25,
      pingTimeout = 10,
      refreshMargin = null,
      backoff = new Backoff(),
      maxPending = 256,
      openTimeout = 10,
      framesPerMinute = 90,
      retryUnavailable = 3,
      WebSocket: Socket = globalThis.WebSocket,
      logger = console,
    } = options;
    if (!contextId) throw new TypeError("contextId is required");
    if (!token && !getToken) throw new TypeError("token or getToken is required");
    if (authMode !== "message" && authMode !== "query") throw new TypeError("authMode must be 'message' or 'query'");
    if (typeof Socket !== "function") throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    this.url = endpointUrl(url, new.target.path);
    this.contextId = contextId;
    this.getToken = getToken ?? (() => token);
    Object.assign(this, { authMode, batch, pingInterval, pingTimeout, backoff, maxPending, openTimeout, retryUnavailable, logger });
    this.WebSocket = Socket;
    this.limiter = framesPerMinute ? new SlidingWindow(framesPerMinute) : null;
    this.tokens = new TokenClock(refreshMargin);
    this.state = "idle";
    this.info = null; // the `connected` data of the current (or last) socket
    this.handlers = new Map();
    this.pending = new Map(); // id -> request awaiting its reply, in send order
    this.counted = 0;
    this.terminal = null;
    this.socket = null; // the live socket's session, while connected
    this.opening = null; // the socket's session between open and `connected`
    this.running = null;
    this.waiters = [];
    this.timers = new Set();
  }

  get connected() {
    return this.state === "connected";
  }

  /** Requests awaiting their reply (what `maxPending` bounds). */
  get pendingCount() {
    return this.counted;
  }

  /**
   * Call `handler(frame)` for every frame of `type` (`"*"`: every frame), replies to
   * `send()` included; `"statechange"` gets `{state, code, reason}`. Returns an unsubscribe function.
   */
  on(type, handler) {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  /** Start (once) and resolve with the `connected` data; rejects when the server refuses for good. */
  connect() {
    if (this.state === "closed") return Promise.reject(this.terminal ?? new ConnectionClosed(1000, "client closed"));
    if (this.state === "connected") return Promise.resolve(this.info);
    const waiting = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (!this.running) this.running = this.run();
    return waiting;
  }

  /**
   * Send a frame `{type, data, id?}`. A request resolves with its reply's `data` (`ack`,
   * `history`, `subscribed`, ...) or rejects with ServerError; while disconnected it waits
   * and is re-sent with the same `id` after a reconnect. typing/cursor/ping resolve at once
   * with whether they went out.
   */
  send(frame) {
    if (!frame || typeof frame.type !== "string") return Promise.reject(new TypeError("a frame needs a string type"));
    if (MANAGED.has(frame.type)) return Promise.reject(new TypeError(`${frame.type} frames are managed by the client`));
    if (FIRE_AND_FORGET.has(frame.type)) return Promise.resolve(this.sendNowait(frame));
    return this.request(frame);
  }

  sendNowait(frame) {
    return this.write(JSON.stringify(frame), { droppable: true });
  }

  /** Close with 1000; waiting requests fail with ConnectionClosed. */
  close() {
    if (this.state === "closed") return;
    const session = this.socket ?? this.opening;
    this.finish(null);
    if (session) session.ws.close(1000, "client closed");
  }

  // --- hooks for the endpoint clients ---------------------------------------------------

  lastSeqParam() {
    return null;
  }

  onOpen() {}

  /** See every frame in arrival order; return the frames to deliver. */
  onFrame(frame) {
    return [frame];
  }

  onDisconnect() {}

  // --- requests ---------------------------------------------------------------------

  request(frame, { scoped = false, counted = true } = {}) {
    if (this.state === "closed") return Promise.reject(this.terminal ?? new ConnectionClosed(1000, "client closed"));
    if (scoped && !this.connected) return Promise.reject(new Disconnected("not connected"));
    const id = frame.id ?? newRequestId();
    if (typeof id !== "string" || id.length < 1 || id.length > 64) return Promise.reject(new TypeError("id must be 1-64 characters"));
    if (this.pending.has(id)) return Promise.reject(new TypeError(`request id ${id} is already pending`));
    if (counted && this.counted >= this.maxPending) {
      return Promise.reject(new QueueFull(`${this.counted} requests await a reply (maxPending)`));
    }
    return new Promise((resolve, reject) => {
      const entry = { id, type: frame.type, payload: JSON.stringify({ ...frame, id }), resolve, reject, scoped, counted, retries: 0 };
      this.pending.set(id, entry);
      if (counted) this.counted += 1;
      this.write(entry.payload);
    });
  }

  /** Forget a request: it will not be re-sent, and its promise never settles. */
  withdraw(id) {
    const entry = this.pending.get(id);
    if (!entry) return;
    this.pending.delete(id);
    if (entry.counted) this.counted -= 1;
  }

  settle(entry, frame) {
    this.pending.delete(entry.id);
    if (entry.counted) this.counted -= 1;
    if (frame.type === "error") {
      entry.reject(new ServerError(frame.data?.code ?? "internal", frame.error, { id: frame.id, data: frame.data }));
    } else {
      entry.resolve(frame.data);
    }
  }

  failPending(error, { scopedOnly = false } = {}) {
    for (const entry of [...this.pending.values()]) {
      if (scopedOnly && !entry.scoped) continue;
      this.pending.delete(entry.id);
      if (entry.counted) this.counted -= 1;
      entry.reject(error);
    }
  }

  // --- writing, paced -----------------------------------------------------------------

  /** Send now, or after the pacing window; fire-and-forget frames are dropped instead of waiting. */
  write(payload, { droppable = false } = {}) {
    const session = this.socket;
    if (!session) return false;
    if (session.backlog.length || (this.limiter && this.limiter.waitTime(monotonic()) > 0)) {
      if (droppable) return false;
      session.backlog.push(payload);
      this.drain(session);
      return true;
    }
    this.limiter?.record(monotonic());
    session.ws.send(payload);
    return true;
  }

  drain(session) {
    if (session.drainTimer || session !== this.socket) return;
    while (session.backlog.length) {
      const wait = this.limiter ? this.limiter.waitTime(monotonic()) : 0;
      if (wait > 0) {
        session.drainTimer = this.later(wait, () => {
          session.drainTimer = null;
          this.drain(session);
        });
        return;
      }
      this.limiter?.record(monotonic());
      session.ws.send(session.backlog.shift());
    }
  }

  later(seconds, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, Math.max(0, seconds * 1000));
    this.timers.add(timer);
    return timer;
  }

  // --- delivery -----------------------------------------------------------------------

  handle(frame) {
    const entry = frame.id != null && REPLY_TYPES.has(frame.type) ? this.pending.get(frame.id) : undefined;
    if (entry && frame.type === "error" && frame.data?.code === "unavailable" && entry.retries < this.retryUnavailable) {
      // Not applied: the same id goes again after a backoff delay (dedup makes it safe).
      entry.retries += 1;
      this.later(this.backoff.delay(entry.retries), () => {
        if (this.pending.get(entry.id) === entry) this.write(entry.payload);
      });
      return;
    }
    let deliver;
    try {
      deliver = this.onFrame(frame);
    } catch (err) {
      this.logger.error("atomic-guide: frame hook failed", err);
      deliver = [frame];
    }
    if (entry) this.settle(entry, frame);
    for (const item of deliver) this.deliver(item);
  }

  deliver(frame) {
    this.emit(frame.type, frame);
    this.emit("*", frame);
  }

  emit(type, value) {
    const set = this.handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(value);
      } catch (err) {
        this.logger.error(`atomic-guide: ${type} handler failed`, err);
      }
    }
  }

  setState(state, code = null, reason = "") {
    this.state = state;
    this.emit("statechange", { state, code, reason });
  }

  // --- lifecycle ----------------------------------------------------------------------

  async run() {
    let retries = 0;
    while (this.state !== "closed") {
      this.setState("connecting");
      let code;
      let reason;
      let lived = 0;
      try {
        const result = await this.serve();
        ({ code, reason } = result);
        if (result.connectedAt !== null) {
          retries = 0;
          lived = monotonic() - result.connectedAt;
        }
      } catch (err) {
        this.logger.warn?.("atomic-guide: connecting failed", err);
        code = 1006;
        reason = String(err?.message ?? err);
      }
      if (this.state === "closed") return;
      const step = afterClose(code, reason, { lived, retries, backoff: this.backoff });
      if (step instanceof ConnectionClosed) {
        this.finish(step);
        return;
      }
      retries = step.retries;
      this.setState("backing_off", code, reason);
      await new Promise((resolve) => this.later(step.delay, resolve));
    }
  }

  /** One socket, from opening to its end: resolves with `{code, reason, connectedAt}`. */
  async serve() {
    const token = await this.getToken();
    if (this.state === "closed") return { code: 1000, reason: "client closed", connectedAt: null };
    const url = new URL(this.url);
    if (this.authMode === "query") {
      url.searchParams.set("token", token);
      url.searchParams.set("contextId", this.contextId);
    }
    const lastSeq = this.lastSeqParam();
    if (lastSeq !== null && this.authMode === "query") url.searchParams.set("lastSeq", String(lastSeq));
    if (this.batch) url.searchParams.set("batch", "1");
    const ws = new this.WebSocket(url.toString());
    const session = { ws, backlog: [], drainTimer: null, lastHeard: monotonic(), connectedAt: null, timers: [] };
    this.opening = session;
    return new Promise((resolve) => {
      let ended = false;
      const end = (code, reason) => {
        if (ended) return;
        ended = true;
        for (const timer of session.timers) clearTimeout(timer), clearInterval(timer);
        if (session.drainTimer) clearTimeout(session.drainTimer);
        if (this.opening === session) this.opening = null;
        if (this.socket === session) {
          this.socket = null;
          this.failPending(new Disconnected("connection lost"), { scopedOnly: true });
          try {
            this.onDisconnect();
          } catch (err) {
            this.logger.error("atomic-guide: disconnect hook failed", err);
          }
        }
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        if (ws.readyState === 0 || ws.readyState === 1) {
          try {
            ws.close(CLOSE_LOCAL, reason.slice(0, 100));
          } catch {
            /* already closing */
          }
        }
        resolve({ code, reason, connectedAt: session.connectedAt });
      };
      session.timers.push(setTimeout(() => end(1006, "no connected frame in time"), this.openTimeout * 1000));
      ws.onopen = () => {
        if (this.authMode === "message") {
          const auth = { type: "auth", token, contextId: this.contextId };
          if (lastSeq !== null) auth.lastSeq = lastSeq;
          ws.send(JSON.stringify(auth));
        }
      };
      ws.onclose = (event) => end(event.code || 1006, event.reason || "");
      ws.onerror = () => {}; // the close event that follows carries the code
      ws.onmessage = (event) => {
        session.lastHeard = monotonic();
        if (typeof event.data !== "string") return;
        let parsed;
        try {
          parsed = JSON.parse(event.data);
        } catch {
          this.logger.warn?.("atomic-guide: undecodable message ignored");
          return;
        }
        for (const frame of Array.isArray(parsed) ? parsed : [parsed]) {
          if (!frame || typeof frame.type !== "string") continue;
          if (session.connectedAt === null) {
            if (frame.type === "connected") this.opened(session, token, frame);
            else this.deliver(frame); // an error before `connected` explains the close that follows
          } else if (this.socket === session) {
            this.handle(frame);
          }
          if (ended) return;
        }
      };
      session.end = end;
    });
  }

  opened(session, token, connected) {
    clearTimeout(session.timers[0]);
    if (this.state === "closed") return;
    session.connectedAt = monotonic();
    this.opening = null;
    this.socket = session;
    this.limiter?.reset(); // the server counts per connection
    this.info = connected.data;
    this.tokens.sync(connected.data?.serverTime, wallClock());
    this.tokens.accept(token, wallClock());
    this.setState("connected");
    try {
      this.onOpen(); // connection-scoped requests (re-join, re-subscribe) go first
    } catch (err) {
      this.logger.error("atomic-guide: open hook failed", err);
    }
    for (const entry of this.pending.values()) if (!entry.scoped) this.write(entry.payload);
    for (const waiter of this.waiters.splice(0)) waiter.resolve(this.info);
    this.deliver(connected);
    session.timers.push(setInterval(() => this.heartbeat(session), this.pingInterval * 1000));
    this.scheduleRefresh(session);
  }

  heartbeat(session) {
    if (monotonic() - session.lastHeard > this.pingInterval + this.pingTimeout) {
      session.end(1006, "heartbeat timeout");
      return;
    }
    session.ws.send('{"type":"ping"}'); // pings are outside the server's frame limit
  }

  scheduleRefresh(session) {
    const due = this.tokens.refreshIn(wallClock());
    if (due === null) return;
    if (due > MAX_TIMER_S) {
      // setTimeout fires at once past 2^31-1 ms: wait in steps instead.
      session.timers.push(setTimeout(() => this.socket === session && this.scheduleRefresh(session), MAX_TIMER_S * 1000));
      return;
    }
    const timer = setTimeout(async () => {
      if (this.socket !== session) return;
      let retryIn = 5;
      try {
        const token = await this.getToken();
        if (this.tokens.isFresher(token)) {
          await this.request({ type: "refresh", token }, { scoped: true, counted: false });
          this.tokens.accept(token, wallClock());
          this.scheduleRefresh(session);
          return;
        }
        this.logger.warn?.("atomic-guide: getToken returned no fresher token");
      } catch (err) {
        if (err instanceof Disconnected) return;
        this.logger.warn?.("atomic-guide: token refresh failed", err);
      }
      const left = (this.tokens.times.expiresAt ?? 0) - this.tokens.serverNow(wallClock());
      retryIn = Math.min(30, Math.max(1, left / 4));
      if (this.socket === session) session.timers.push(setTimeout(() => this.scheduleRefresh(session), retryIn * 1000));
    }, due * 1000);
    session.timers.push(timer);
  }

  finish(error) {
    if (this.state === "closed") return;
    this.terminal = error;
    this.setState("closed", error?.code ?? 1000, error?.reason ?? "");
    const failure = error ?? new ConnectionClosed(1000, "client closed");
    this.failPending(failure);
    for (const waiter of this.waiters.splice(0)) waiter.reject(failure);
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (error && error.code !== 1000) this.logger.warn?.(`atomic-guide: client ended: ${error.message}`);
  }
}

