// Operational transformation of plain-text edits, free of I/O. Positions and lengths are
// UTF-16 code units — JavaScript's own string indices — as on the wire. The rules are the
// server's (docs/protocol.md, "Collaboration"):
//  * insert vs insert at one position: the one the server applied first stays left;
//  * an insert strictly inside a deleted range moves to the start of that range;
//  * a delete that strictly contains a concurrent insert splits around the inserted text;
//  * overlapping deletes shrink; a delete covered by another becomes nothing.
// So a transformed operation is a *list* of 0, 1 or 2 operations, applied in order.

export const insert = (position, text) => ({ type: "insert", position, text });
export const del = (position, length) => ({ type: "delete", position, length });
export const opLength = (op) => (op.type === "insert" ? op.text.length : op.length);

const isHigh = (code) => code >= 0xd800 && code <= 0xdbff;
const isLow = (code) => code >= 0xdc00 && code <= 0xdfff;

/** Throws RangeError unless `position` is a boundary of `text` between whole characters. */
export function checkPosition(text, position) {
  if (!Number.isInteger(position) || position < 0) throw new RangeError(`position ${position} is not a non-negative integer`);
  if (position > text.length) throw new RangeError(`position ${position} is past the end (${text.length})`);
  if (position > 0 && position < text.length && isHigh(text.charCodeAt(position - 1)) && isLow(text.charCodeAt(position))) {
    throw new RangeError(`position ${position} splits a surrogate pair`);
  }
}

export function apply(text, op) {
  checkPosition(text, op.position);
  if (op.type === "insert") return text.slice(0, op.position) + op.text + text.slice(op.position);
  if (!(op.length >= 0)) throw new RangeError("delete length is negative");
  checkPosition(text, op.position + op.length);
  return text.slice(0, op.position) + text.slice(op.position + op.length);
}

export function applyAll(text, ops) {
  for (const op of ops) text = apply(text, op);
  return text;
}

/** `op` rewritten to apply after `other` (both made on the same text). `winsTie`: `op` was applied first. */
export function transform(op, other, winsTie) {
  if (op.type === "delete" && op.length === 0) return [];
  if (other.type === "delete" && other.length === 0) return [op];
  const otherLen = opLength(other);
  if (op.type === "insert") {
    if (other.type === "insert") {
      if (other.position < op.position || (other.position === op.position && !winsTie)) {
        return [insert(op.position + otherLen, op.text)];
      }
      return [op];
    }
    if (op.position <= other.position) return [op];
    if (op.position >= other.position + otherLen) return [insert(op.position - otherLen, op.text)];
    return [insert(other.position, op.text)]; // inside the deleted range
  }
  const start = op.position;
  const end = start + op.length;
  if (other.type === "insert") {
    if (other.position <= start) return [del(start + otherLen, op.length)];
    if (other.position >= end) return [op];
    const before = other.position - start;
    return [del(start, before), del(start + otherLen, op.length - before)];
  }
  const oStart = other.position;
  const oEnd = oStart + otherLen;
  if (oEnd <= start) return [del(start - otherLen, op.length)];
  if (oStart >= end) return [op];
  const rest = op.length - (Math.min(end, oEnd) - Math.max(start, oStart));
  return rest > 0 ? [del(Math.min(start, oStart), rest)] : [];
}

/**
 * Transform two sequences made on the same text past each other: returns `[ops2, others2]`
 * with applyAll(applyAll(t, others), ops2) === applyAll(applyAll(t, ops), others2).
 */
export function transformLists(ops, others, opsWinTies) {
  const result = [];
  let remaining = [...others];
  for (const op of ops) {
    let parts = [op];
    const transformed = [];
    for (const other of remaining) {
      let otherParts;
      if (parts.length === 1) {
        otherParts = transform(other, parts[0], !opsWinTies);
        parts = transform(parts[0], other, opsWinTies);
      } else {
        [otherParts, parts] = transformLists([other], parts, !opsWinTies);
      }
      transformed.push(...otherParts);
    }
    result.push(...parts);
    remaining = transformed;
  }
  return [result, remaining];
}

/**
 * Operations turning `oldText` into `newText` (never half a pair). Around the common prefix and
 * suffix the middle is one insert or one delete, or several inserts when the old middle is kept,
 * in order, in the new one: others' typing spread over the document, as a resync after missed
 * edits sees it. Local edits rebased on these keep their place between the characters they were
 * typed between, instead of being pulled into someone else's words by one delete over the whole
 * span. Anything else is one delete then one insert.
 */
export function diff(oldText, newText) {
  const limit = Math.min(oldText.length, newText.length);
  let prefix = 0;
  while (prefix < limit && oldText.charCodeAt(prefix) === newText.charCodeAt(prefix)) prefix += 1;
  if (prefix > 0 && isHigh(oldText.charCodeAt(prefix - 1))) prefix -= 1;
  let suffix = 0;
  while (suffix < limit - prefix && oldText.charCodeAt(oldText.length - 1 - suffix) === newText.charCodeAt(newText.length - 1 - suffix)) {
    suffix += 1;
  }
  if (suffix > 0 && isLow(oldText.charCodeAt(oldText.length - suffix))) suffix -= 1;
  const removed = oldText.length - suffix - prefix;
  const inserted = newText.slice(prefix, newText.length - suffix);
  if (removed > 0 && removed < inserted.length) {
    const spread = interleave(oldText.slice(prefix, oldText.length - suffix), inserted, prefix);
    if (spread) return spread;
  }
  const ops = [];
  if (removed > 0) ops.push(del(prefix, removed));
  if (inserted) ops.push(insert(prefix, inserted));
  return ops;
}

/**
 * When `short` is a subsequence of `long` (whole characters): the inserts turning it into
 * `long`, each at its place in the text as the ones before it left it (from `position`); else null.
 */
function interleave(short, long, position) {
  const ops = [];
  let j = 0;
  for (const ch of short) {
    const k = long.indexOf(ch, j);
    if (k < 0) return null;
    if (k > j) {
      ops.push(insert(position, long.slice(j, k)));
      position += k - j;
    }
    position += ch.length;
    j = k + ch.length;
  }
  if (j < long.length) ops.push(insert(position, long.slice(j)));
  return ops;
}

/** One operation equal to `first` then `second` (typing and backspacing runs), or null. */
export function merge(first, second) {
  if (first.type === "insert" && second.type === "insert") {
    if (second.position === first.position + first.text.length) return insert(first.position, first.text + second.text);
    if (second.position === first.position) return insert(first.position, second.text + first.text);
    return null;
  }
  if (first.type === "delete" && second.type === "delete") {
    if (second.position === first.position) return del(first.position, first.length + second.length);
    if (second.position + second.length === first.position) return del(second.position, first.length + second.length);
  }
  return null;
}
