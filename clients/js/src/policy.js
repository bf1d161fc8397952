// Reconnect and pacing policy, free of I/O: full-jitter backoff, the close-code table,
// and a sliding window that keeps a connection under the server's frame rate limit.
import { ReconnectFailed, errorForClose, isTerminalClose } from "./errors.js";

/** A 1001 on a socket younger than this (seconds) counts as a failure: no tight loop. */
export const DRAIN_MIN_LIFETIME = 1.0;

/**
 * Exponential backoff with full jitter: the n-th retry waits uniform(0, min(cap, base·2ⁿ))
 * seconds, which spreads a crowd that lost the same gateway over the whole window.
 */
export class Backoff {
  constructor({ base = 0.5, cap = 30, maxAttempts = null, random = Math.random } = {}) {
    if (base < 0 || cap < 0) throw new RangeError("base and cap must be >= 0");
    if (maxAttempts !== null && maxAttempts < 0) throw new RangeError("maxAttempts must be >= 0 or null");
    Object.assign(this, { base, cap, maxAttempts, random });
  }

  ceiling(attempt) {
    if (attempt < 0) throw new RangeError("attempt must be >= 0");
    return attempt >= 62 ? this.cap : Math.min(this.cap, this.base * 2 ** attempt);
  }

  delay(attempt) {
    const ceiling = this.ceiling(attempt);
    return Math.min(ceiling, Math.max(0, this.random() * ceiling));
  }

  exhausted(retries) {
    return this.maxAttempts !== null && retries >= this.maxAttempts;
  }
}

/**
 * What to do after a socket closed with `code` (1006 when it never opened):
 * `{ delay, retries }` to reconnect, or the error that ends the client.
 * `lived`: seconds the socket was authenticated; `retries`: consecutive retries so far.
 */
export function afterClose(code, reason, { lived, retries, backoff }) {
  if (isTerminalClose(code)) return errorForClose(code, reason);
  if (code === 1001 && lived >= DRAIN_MIN_LIFETIME) return { delay: 0, retries };
  if (backoff.exhausted(retries)) {
    return new ReconnectFailed(code, `gave up after ${retries} retries: ${reason}`);
  }
  return { delay: backoff.delay(retries), retries: retries + 1 };
}

/** At most `limit` frames in any `window` seconds. Times are seconds, passed in. */
export class SlidingWindow {
  constructor(limit, window = 60) {
    if (!(limit >= 1) || !(window > 0)) throw new RangeError("limit >= 1 and window > 0");
    this.limit = limit;
    this.window = window;
    this.sent = [];
  }

  /** Seconds until one more frame may go (0: now). */
  waitTime(now) {
    let drop = 0;
    while (drop < this.sent.length && this.sent[drop] <= now - this.window) drop += 1;
    if (drop) this.sent.splice(0, drop);
    return this.sent.length < this.limit ? 0 : this.sent[0] + this.window - now;
  }

  record(now) {
    this.sent.push(now);
  }

  reset() {
    this.sent.length = 0;
  }
}
