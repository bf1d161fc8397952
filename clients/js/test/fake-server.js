// A scripted protocol peer for the client tests: an injectable WebSocket class whose
// instances the test drives (open them, deliver server frames — one or a batched array —,
// read what the client sent, close them with a code). No network, no real server.
//
//   const server = new FakeServer();
//   const client = new ChatWebSocketClient({ url: "ws://gw.test", contextId: "c1", token, WebSocket: server.WebSocket });
//   const connecting = client.connect();
//   const ws = await server.nextSocket();
//   await ws.accept();                      // open, read `auth` (message mode), send `connected`
//   const frame = await ws.expect("message");
//   ws.deliver({ type: "ack", id: frame.id, data: { messageId: "m1", seq: 1 } });
//
// Every wait is event driven (a socket was created, a frame was sent, a socket closed) and
// bounded by a timeout, so a test that waits for something that never happens fails fast
// with a message saying what it waited for.

import { test as nodeTest } from "node:test";

import { Backoff } from "../src/atomic-guide.js";

export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSING = 2;
export const CLOSED = 3;

/** Wait bounds are multiplied by AG_TEST_TIMEOUT_FACTOR (slow CI machines). */
export const FACTOR = Number(process.env.AG_TEST_TIMEOUT_FACTOR ?? "1") || 1;
export const DEFAULT_WAIT_MS = 2000;
/** Per-test bound: a client promise that never settles fails its test instead of hanging the run. */
export const TEST_TIMEOUT_MS = 10_000 * FACTOR;

export const iso = (ms = Date.now()) => new Date(ms).toISOString();

const b64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** A JWT-shaped token with `claims`; the signature is junk (the client never verifies). */
export function makeJwt(claims) {
  return `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}.c2lnbmF0dXJl`;
}

/** A token issued `age` seconds ago that expires `lifetime` seconds from now. */
export function jwt({ lifetime = 3600, age = 0, ...claims } = {}) {
  const now = Date.now() / 1000;
  return makeJwt({ sub: "u1", context_id: "c1", iat: now - age, exp: now + lifetime, ...claims });
}

/** A logger that keeps what the client logs instead of printing it. */
export function quietLogger() {
  const records = [];
  const watchers = new Set();
  const keep = (level) => (...args) => {
    records.push({ level, args });
    for (const callback of [...watchers]) callback();
  };
  /** Wait until a record of `level` whose first argument contains `text` was logged. */
  const logged = (level, text, timeoutMs) =>
    until(
      (cb) => (watchers.add(cb), () => watchers.delete(cb)),
      () => records.find((r) => r.level === level && String(r.args[0]).includes(text)),
      `a ${level} log containing "${text}"`,
      timeoutMs,
    );
  return { records, logged, debug: keep("debug"), info: keep("info"), log: keep("log"), warn: keep("warn"), error: keep("error") };
}

/** Resolve with the first truthy `check()`, re-evaluated whenever `subscribe`'s callback fires. */
export function until(subscribe, check, label, timeoutMs = DEFAULT_WAIT_MS) {
  return new Promise((resolve, reject) => {
    let done = false;
    let unsubscribe = () => {};
    const finish = (fn, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      unsubscribe();
      fn(value);
    };
    const probe = () => {
      let value;
      try {
        value = check();
      } catch (err) {
        finish(reject, err);
        return;
      }
      if (value) finish(resolve, value);
    };
    const timer = setTimeout(() => finish(reject, new Error(`timed out after ${timeoutMs * FACTOR} ms waiting for ${label}`)), timeoutMs * FACTOR);
    unsubscribe = subscribe(probe);
    probe();
  });
}

/** Wait until `client.state === state` (checked now and on every statechange). */
export function stateReached(client, state, timeoutMs) {
  return until((cb) => client.on("statechange", cb), () => client.state === state, `client state ${state} (now ${client.state})`, timeoutMs);
}

/** The next frame of `type` the client hands to its handlers (optionally matching `pred`). */
export function nextEvent(client, type, pred = () => true, timeoutMs) {
  let seen = null;
  return until(
    (cb) =>
      client.on(type, (frame) => {
        if (seen === null && pred(frame)) {
          seen = frame;
          cb();
        }
      }),
    () => seen,
    `a "${type}" event`,
    timeoutMs,
  );
}

/** Collect every frame of `type` the client delivers (an array that keeps filling). */
export function collect(client, type = "*") {
  const frames = [];
  frames.stop = client.on(type, (frame) => frames.push(frame));
  return frames;
}

export class FakeServer {
  constructor({ userId = "u1", username = "Ada", roles = ["learner"] } = {}) {
    this.sockets = [];
    this.handed = 0; // sockets nextSocket() has handed to the test
    this.watchers = new Set();
    this.identity = { userId, username, roles };
    const server = this;

    /** What the client gets as `WebSocket`: browser-like, driven by the test. */
    this.WebSocket = class FakeWebSocket {
      static CONNECTING = CONNECTING;
      static OPEN = OPEN;
      static CLOSING = CLOSING;
      static CLOSED = CLOSED;

      constructor(url, protocols) {
        this.url = String(url);
        this.protocols = protocols;
        this.readyState = CONNECTING;
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        this.sent = []; // raw client messages, in order
        this.closeCalls = []; // {code, reason} of every client close()
        this.closeEvent = null; // the close event fired at the client
        this.cursor = 0; // read position of expect()/nextFrame()
        this.server = server;
        server.sockets.push(this);
        server.changed();
      }

      // --- the browser API the client uses --------------------------------------------

      send(data) {
        if (this.readyState === CONNECTING) throw new Error("InvalidStateError: send() before open");
        if (this.readyState !== OPEN) return; // browsers discard data sent while closing
        this.sent.push(data);
        server.changed();
      }

      close(code, reason = "") {
        this.closeCalls.push({ code, reason });
        if (this.readyState === CLOSING || this.readyState === CLOSED) return;
        this.readyState = CLOSING;
        // The closing handshake completes later, as in a browser; the close event echoes the code.
        setImmediate(() => this.fireClose(code ?? 1005, reason));
        server.changed();
      }

      // --- the test's side ----------------------------------------------------------------

      get query() {
        return new URL(this.url).searchParams;
      }

      /** Every client message parsed, pings included. */
      get frames() {
        return this.sent.map((raw) => JSON.parse(raw));
      }

      get closed() {
        return this.readyState === CLOSED;
      }

      open() {
        if (this.readyState !== CONNECTING) throw new Error("open() on a socket that is not connecting");
        this.readyState = OPEN;
        this.onopen?.({ type: "open" });
        server.changed();
      }

      /** Deliver one server frame, or an array of frames as one batched message (timestamps added). */
      deliver(frames) {
        const stamp = (frame) => ({ timestamp: iso(), data: {}, ...frame });
        const payload = Array.isArray(frames) ? frames.map(stamp) : stamp(frames);
        this.deliverRaw(JSON.stringify(payload));
      }

      deliverRaw(data) {
        if (this.readyState !== OPEN) throw new Error(`deliver on a socket in state ${this.readyState}`);
        this.onmessage?.({ type: "message", data });
        server.changed();
      }

      /** The server closes the socket with `code`. */
      serverClose(code, reason = "") {
        if (this.readyState === CLOSED) return;
        this.fireClose(code, reason);
      }

      fireClose(code, reason) {
        if (this.readyState === CLOSED) return;
        this.readyState = CLOSED;
        this.closeEvent = { code, reason };
        this.onclose?.({ type: "close", code, reason, wasClean: true });
        server.changed();
      }

      /** Wait until the client closed this socket itself (or it was closed); resolves the close call or event. */
      waitClosed(timeoutMs) {
        return until((cb) => server.watch(cb), () => (this.closed ? this.closeCalls[0] ?? this.closeEvent : null), `socket ${this.url} to close`, timeoutMs);
      }

      /** The next client frame after the read cursor, pings skipped unless `pings`. */
      nextFrame({ pings = false, timeoutMs } = {}) {
        const find = () => {
          while (this.cursor < this.sent.length) {
            const frame = JSON.parse(this.sent[this.cursor]);
            this.cursor += 1;
            if (pings || frame.type !== "ping") return frame;
          }
          return null;
        };
        return until((cb) => server.watch(cb), find, `a client frame on ${this.url}`, timeoutMs);
      }

      /** The next non-ping client frame, which must be of `type`. */
      async expect(type, timeoutMs) {
        const frame = await this.nextFrame({ timeoutMs });
        if (frame.type !== type) throw new Error(`expected a "${type}" frame, got ${JSON.stringify(frame)}`);
        return frame;
      }

      /** Wait until the client has sent `count` frames of `type` on this socket; returns them. */
      async sentOfType(type, count = 1, timeoutMs) {
        return until(
          (cb) => server.watch(cb),
          () => {
            const found = this.frames.filter((f) => f.type === type);
            return found.length >= count ? found : null;
          },
          `${count} "${type}" frame(s) on ${this.url}`,
          timeoutMs,
        );
      }

      /** The `auth` frame or null (query mode): what a real gateway would check first. */
      get authMode() {
        return this.query.has("token") ? "query" : "message";
      }

      /**
       * Open, read the `auth` frame in message mode, and send `connected`. Resolves with the
       * auth frame (null in query mode). `data` overrides fields of the `connected` data.
       */
      async accept(data = {}) {
        this.open();
        let auth = null;
        if (this.authMode === "message") {
          auth = await this.nextFrame({ pings: true });
          if (auth.type !== "auth") throw new Error(`first frame is not auth: ${JSON.stringify(auth)}`);
        }
        const contextId = auth ? auth.contextId : this.query.get("contextId");
        this.deliver({
          type: "connected",
          data: { connectionId: `conn-${server.sockets.indexOf(this) + 1}`, ...server.identity, contextId, serverTime: iso(), ...data },
        });
        return auth;
      }
    };
  }

  watch(callback) {
    this.watchers.add(callback);
    return () => this.watchers.delete(callback);
  }

  changed() {
    for (const callback of [...this.watchers]) callback();
  }

  /**
   * The socket with this index once the client created it; by default the first one not yet
   * handed out by nextSocket().
   */
  async nextSocket(index = this.handed, timeoutMs) {
    const ws = await until((cb) => this.watch(cb), () => this.sockets[index], `socket #${index + 1} to be opened by the client`, timeoutMs);
    this.handed = Math.max(this.handed, index + 1);
    return ws;
  }

  get last() {
    return this.sockets[this.sockets.length - 1];
  }
}

/** node:test's `test` with the per-test timeout every suite uses. */
export const test = (name, fn) => nodeTest(name, { timeout: TEST_TIMEOUT_MS }, fn);

/** A client of `Kind` on a fresh fake server (`serverOptions`); closed when the test ends. */
export function startClient(t, Kind, options = {}, serverOptions = {}) {
  const server = new FakeServer(serverOptions);
  const logger = quietLogger();
  const client = new Kind({
    url: "ws://gw.test",
    contextId: "c1",
    token: jwt(),
    WebSocket: server.WebSocket,
    logger,
    backoff: new Backoff({ random: () => 0 }),
    ...options,
  });
  t.after(() => client.close());
  return { server, client, logger };
}
