// Reading a JWT's `exp`/`iat` (never verifying: the client has no key and needs none) and
// deciding when to send `refresh`, in the server's clock as estimated from `serverTime`.

/** Refresh once this share of a token's lifetime has passed (without `refreshMargin`). */
export const REFRESH_FRACTION = 0.8;

function b64urlDecode(segment) {
  const padded = segment.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (segment.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

const numeric = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** `{ expiresAt, issuedAt }` in POSIX seconds; nulls for an opaque or unreadable token. */
export function readTokenTimes(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return { expiresAt: null, issuedAt: null };
  try {
    const claims = JSON.parse(b64urlDecode(parts[1]));
    if (claims === null || typeof claims !== "object") return { expiresAt: null, issuedAt: null };
    return { expiresAt: numeric(claims.exp), issuedAt: numeric(claims.iat) };
  } catch {
    return { expiresAt: null, issuedAt: null };
  }
}

export class TokenClock {
  constructor(refreshMargin = null) {
    this.refreshMargin = refreshMargin;
    this.token = "";
    this.times = { expiresAt: null, issuedAt: null };
    this.obtainedAt = 0;
    this.skew = 0;
  }

  serverNow(now) {
    return now + this.skew;
  }

  /** Estimate the server clock from `connected.serverTime` (latency only makes us early). */
  sync(serverTime, now) {
    const parsed = Date.parse(serverTime ?? "");
    this.skew = Number.isNaN(parsed) ? 0 : parsed / 1000 - now;
  }

  accept(token, now) {
    this.token = token;
    this.times = readTokenTimes(token);
    this.obtainedAt = this.serverNow(now);
  }

  /** Seconds until a refresh is due, or null when the token never expires. */
  refreshIn(now) {
    const { expiresAt, issuedAt } = this.times;
    if (expiresAt === null) return null;
    let due;
    if (this.refreshMargin !== null) {
      due = expiresAt - this.refreshMargin;
    } else {
      const start = issuedAt ?? this.obtainedAt;
      due = start + REFRESH_FRACTION * Math.max(0, expiresAt - start);
    }
    return Math.max(0, due - this.serverNow(now));
  }

  /** A newer token than the one in force (a provider that keeps returning it is useless). */
  isFresher(token) {
    const { expiresAt } = readTokenTimes(token);
    return token !== this.token && (this.times.expiresAt === null || (expiresAt ?? 0) > this.times.expiresAt);
  }
}
