// Seeded randomness for the property tests (no libraries): a PRNG, texts full of astral
// characters (surrogate pairs, some sharing a high or a low half), and edits that fit them.
// AG_TEST_SEED fixes the base seed; every failure message names the seed to replay it.

export const BASE_SEED = Number(process.env.AG_TEST_SEED ?? "20260105") >>> 0;

/** mulberry32: small, fast, good enough to explore edits. */
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)); // inclusive
  return {
    seed,
    next,
    int,
    bool: (p = 0.5) => next() < p,
    pick: (items) => items[int(0, items.length - 1)],
  };
}

// 😀 U+1F600 = D83D DE00, 😁 U+1F601 = D83D DE01 (same high half), 🐀 U+1F400 = D83D DC00,
// U+10600 = D801 DE00 (same low half as 😀), 𝄞 U+1D11E, plus BMP letters.
export const ALPHABET = ["a", "b", "c", " ", "é", "中", "😀", "😁", "🐀", "\u{10600}", "𝄞"];

export function randomText(r, maxChars = 10, alphabet = ALPHABET) {
  let text = "";
  for (let n = r.int(0, maxChars); n > 0; n -= 1) text += r.pick(alphabet);
  return text;
}

/** UTF-16 positions of `text` that do not split a surrogate pair. */
export function boundaries(text) {
  const out = [0];
  let i = 0;
  for (const ch of text) {
    i += ch.length;
    out.push(i);
  }
  return out;
}

/** Every UTF-16 position that falls between the halves of a surrogate pair. */
export function splitPositions(text) {
  const inside = [];
  let i = 0;
  for (const ch of text) {
    if (ch.length === 2) inside.push(i + 1);
    i += ch.length;
  }
  return inside;
}

/** A random insert or delete that fits `text` (whole characters only). */
export function randomOp(r, text, { maxInsert = 3, maxDelete = 4, alphabet = ALPHABET } = {}) {
  const bounds = boundaries(text);
  if (bounds.length === 1 || r.bool()) {
    let inserted = "";
    for (let n = r.int(1, maxInsert); n > 0; n -= 1) inserted += r.pick(alphabet);
    return { type: "insert", position: r.pick(bounds), text: inserted };
  }
  const i = r.int(0, bounds.length - 2);
  const j = r.int(i + 1, Math.min(bounds.length - 1, i + maxDelete));
  return { type: "delete", position: bounds[i], length: bounds[j] - bounds[i] };
}

/** `n` edits, each fitting the text the ones before it produced. */
export function randomOps(r, text, n, apply, options) {
  const ops = [];
  for (let k = 0; k < n; k += 1) {
    const op = randomOp(r, text, options);
    ops.push(op);
    text = apply(text, op);
  }
  return ops;
}

/** True when `text` holds a surrogate that is not half of a pair (not valid Unicode text). */
export const hasLoneSurrogate = (text) => /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(text);

export const show = (value) => JSON.stringify(value, (_, v) => (typeof v === "string" ? v.replace(/[\ud800-\udfff]/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`) : v));
