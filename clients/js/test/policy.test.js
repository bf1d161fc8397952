// Pure policy parts: full-jitter backoff, the close-code table, the pacing window, and
// reading a JWT's times to decide when to refresh it.
import { test } from "node:test";
import assert from "node:assert/strict";

import { AuthError, Backoff, ConnectionClosed, ForbiddenError, ReconnectFailed, SlidingWindow, TooLargeError, afterClose } from "../src/atomic-guide.js";
import { DRAIN_MIN_LIFETIME } from "../src/policy.js";
import { REFRESH_FRACTION, TokenClock, readTokenTimes } from "../src/token.js";
import { makeJwt } from "./fake-server.js";
import { BASE_SEED, rng } from "./random.js";

test("Backoff.delay is uniform in [0, min(cap, base * 2^attempt)] (full jitter)", () => {
  const r = rng(BASE_SEED);
  for (const [base, cap] of [
    [0.5, 30],
    [1, 10],
    [0.01, 1000],
  ]) {
    for (let attempt = 0; attempt < 80; attempt += 1) {
      const ceiling = Math.min(cap, base * 2 ** attempt);
      for (const u of [0, 0.25, 0.5, 0.999999, r.next()]) {
        const backoff = new Backoff({ base, cap, random: () => u });
        assert.equal(backoff.ceiling(attempt), ceiling, `ceiling base=${base} cap=${cap} attempt=${attempt}`);
        const d = backoff.delay(attempt);
        assert.ok(d >= 0 && d <= ceiling, `delay ${d} outside [0, ${ceiling}]`);
        assert.ok(Math.abs(d - u * ceiling) < 1e-9, `delay ${d} is random() x ceiling (${u} x ${ceiling})`);
      }
    }
  }
  // with Math.random: bounded, and actually spread over the window
  const real = new Backoff({ base: 0.5, cap: 30 });
  const samples = Array.from({ length: 2000 }, () => real.delay(3));
  assert.ok(samples.every((d) => d >= 0 && d <= 4));
  assert.ok(Math.min(...samples) < 0.5 && Math.max(...samples) > 3.5, "spread over [0, 4]");
  // a misbehaving random source cannot push it outside the window
  assert.equal(new Backoff({ random: () => 2 }).delay(1), 1);
  assert.equal(new Backoff({ random: () => -1 }).delay(1), 0);
});

test("Backoff: argument checks and maxAttempts", () => {
  assert.throws(() => new Backoff({ base: -1 }), RangeError);
  assert.throws(() => new Backoff({ maxAttempts: -1 }), RangeError);
  assert.throws(() => new Backoff().ceiling(-1), RangeError);
  const limited = new Backoff({ maxAttempts: 3 });
  assert.deepEqual([0, 1, 2, 3, 4].map((n) => limited.exhausted(n)), [false, false, false, true, true]);
  assert.equal(new Backoff().exhausted(1e9), false);
});

test("afterClose: the protocol's close-code table", () => {
  const backoff = new Backoff({ random: () => 0.5, base: 1, cap: 30 });
  for (const [code, Kind] of [
    [1000, ConnectionClosed],
    [1009, TooLargeError],
    [4401, AuthError],
    [4403, ForbiddenError],
  ]) {
    const step = afterClose(code, "why", { lived: 100, retries: 0, backoff });
    assert.equal(step.constructor, Kind, `close ${code}`);
    assert.equal(step.code, code);
    assert.equal(step.reason, "why");
  }
  for (const code of [1006, 1008, 1011, 1012, 1013, 4408]) {
    assert.deepEqual(afterClose(code, "", { lived: 100, retries: 2, backoff }), { delay: 2, retries: 3 }, `close ${code}`);
  }
  assert.deepEqual(afterClose(1001, "", { lived: DRAIN_MIN_LIFETIME, retries: 0, backoff }), { delay: 0, retries: 0 });
  assert.deepEqual(afterClose(1001, "", { lived: DRAIN_MIN_LIFETIME - 0.01, retries: 0, backoff }), { delay: 0.5, retries: 1 });
  const step = afterClose(1006, "down", { lived: 0, retries: 5, backoff: new Backoff({ maxAttempts: 5 }) });
  assert.ok(step instanceof ReconnectFailed);
  assert.equal(step.code, 1006);
});

test("SlidingWindow: at most `limit` frames in any `window` seconds", () => {
  const w = new SlidingWindow(3, 60);
  assert.equal(w.waitTime(0), 0);
  w.record(0);
  w.record(10);
  w.record(20);
  assert.equal(w.waitTime(30), 30, "the oldest leaves the window at 60");
  assert.equal(w.waitTime(60), 0);
  w.record(60);
  assert.equal(w.waitTime(61), 9);
  w.reset();
  assert.equal(w.waitTime(61), 0);
  assert.throws(() => new SlidingWindow(0), RangeError);
  const r = rng(BASE_SEED + 9);
  const win = new SlidingWindow(5, 10);
  const sent = [];
  let now = 0;
  for (let i = 0; i < 500; i += 1) {
    now += r.next() * 3;
    const wait = win.waitTime(now);
    if (wait > 0) now += wait;
    assert.equal(win.waitTime(now), 0);
    win.record(now);
    sent.push(now);
    assert.ok(sent.filter((t) => t > now - 10).length <= 5, `more than 5 frames in the 10 s before ${now}`);
  }
});

test("readTokenTimes reads exp/iat from any base64url payload; opaque tokens have none", () => {
  // payloads whose base64url needs '-' / '_' and no padding
  for (let k = 0; k < 50; k += 1) {
    const claims = { sub: "ü?>".repeat(k % 7), exp: 2_000_000_000 + k, iat: 1_900_000_000 - k, pad: "x".repeat(k) };
    assert.deepEqual(readTokenTimes(makeJwt(claims)), { expiresAt: claims.exp, issuedAt: claims.iat });
  }
  const none = { expiresAt: null, issuedAt: null };
  assert.deepEqual(readTokenTimes("opaque-token"), none);
  assert.deepEqual(readTokenTimes("a.b"), none);
  assert.deepEqual(readTokenTimes("a.%%%.c"), none);
  assert.deepEqual(readTokenTimes(makeJwt({ exp: "soon" })), none);
  assert.deepEqual(readTokenTimes(null), none);
});

test("TokenClock: refresh after REFRESH_FRACTION of the lifetime, or refreshMargin before exp, in server time", () => {
  assert.equal(REFRESH_FRACTION, 0.8);
  const now = 1_800_000_000;
  const clock = new TokenClock();
  clock.sync(new Date(now * 1000).toISOString(), now);
  clock.accept(makeJwt({ iat: now - 90, exp: now + 60 }), now);
  assert.ok(Math.abs(clock.refreshIn(now) - 30) < 1e-6, "80 % of 150 s after iat");
  assert.equal(clock.refreshIn(now + 45), 0, "overdue: at once");

  const noIat = new TokenClock();
  noIat.accept(makeJwt({ exp: now + 100 }), now);
  assert.ok(Math.abs(noIat.refreshIn(now) - 80) < 1e-6, "without iat, from when it was obtained");

  const margin = new TokenClock(10);
  margin.accept(makeJwt({ iat: now, exp: now + 100 }), now);
  assert.ok(Math.abs(margin.refreshIn(now) - 90) < 1e-6);

  // the server's clock is 20 s ahead: refresh 20 s earlier by ours
  const skewed = new TokenClock(10);
  skewed.sync(new Date((now + 20) * 1000).toISOString(), now);
  skewed.accept(makeJwt({ iat: now, exp: now + 100 }), now);
  assert.ok(Math.abs(skewed.refreshIn(now) - 70) < 1e-6);

  const opaque = new TokenClock();
  opaque.accept("opaque", now);
  assert.equal(opaque.refreshIn(now), null);
  assert.equal(opaque.isFresher("another"), true);
  assert.equal(opaque.isFresher("opaque"), false);
  assert.equal(clock.isFresher(makeJwt({ exp: now + 61 })), true);
  assert.equal(clock.isFresher(makeJwt({ exp: now + 60, jti: "x" })), false, "not later: not fresher");
});
