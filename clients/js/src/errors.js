// Typed errors: what a caller can catch, and which close codes end the client for good
// (docs/protocol.md, "Errors and close codes").

export class AtomicGuideError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** The server answered a request with `error`; `code` is the protocol's error code. */
export class ServerError extends AtomicGuideError {
  constructor(code, message, { id, data } = {}) {
    super(message || code);
    this.code = code;
    this.id = id;
    this.data = data;
  }
}

/** `send()` refused a request: `maxPending` requests already await their reply. */
export class QueueFull extends AtomicGuideError {}

/** A request bound to one socket (refresh, a re-join) lost that socket. */
export class Disconnected extends AtomicGuideError {}

/** The client ended: `code` is the WebSocket close code that ended it (1000: closed by us). */
export class ConnectionClosed extends AtomicGuideError {
  constructor(code, reason = "") {
    super(`connection closed (${code}${reason ? `: ${reason}` : ""})`);
    this.code = code;
    this.reason = reason;
  }
}

/** 4401: the token is missing, invalid or expired; a new token is needed. */
export class AuthError extends ConnectionClosed {}
/** 4403: the token is valid, but not for this context or endpoint. */
export class ForbiddenError extends ConnectionClosed {}
/** 1009: frames over the server's size limit, repeatedly. */
export class TooLargeError extends ConnectionClosed {}
/** The backoff policy's `maxAttempts` retries in a row failed. */
export class ReconnectFailed extends ConnectionClosed {}

const TERMINAL = new Map([
  [1000, ConnectionClosed],
  [1009, TooLargeError],
  [4401, AuthError],
  [4403, ForbiddenError],
]);

/** Close codes after which reconnecting cannot help. */
export function isTerminalClose(code) {
  return TERMINAL.has(code);
}

export function errorForClose(code, reason = "") {
  const Kind = TERMINAL.get(code) ?? ConnectionClosed;
  return new Kind(code, reason);
}
