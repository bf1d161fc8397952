// OT (ot.js): the protocol's transformation rules, hand-written properties over random
// texts full of surrogate pairs — TP1 convergence of single edits and of sequences
// (transformLists), that the right characters survive, apply()'s refusal to split a pair,
// diff() and merge().
import { test } from "node:test";
import assert from "node:assert/strict";

import { ot } from "../src/atomic-guide.js";
import { BASE_SEED, boundaries, hasLoneSurrogate, randomOp, randomOps, randomText, rng, show, splitPositions } from "./random.js";

const { apply, applyAll, del, diff, insert, merge, transform, transformLists, checkPosition } = ot;

// --- the rules, by example ------------------------------------------------------------------

test("insert vs insert at one position: the one applied first stays left", () => {
  const t = "ab";
  const mine = insert(1, "X");
  const theirs = insert(1, "Y");
  // theirs was applied first: mine loses the tie and moves right
  assert.deepEqual(transform(mine, theirs, false), [insert(2, "X")]);
  assert.deepEqual(transform(theirs, mine, true), [theirs]);
  assert.equal(applyAll(apply(t, theirs), transform(mine, theirs, false)), "aYXb");
  assert.equal(applyAll(apply(t, mine), transform(theirs, mine, true)), "aYXb");
  // positions count UTF-16 units: an astral insert moves the other by 2
  assert.deepEqual(transform(insert(3, "z"), insert(1, "😀"), false), [insert(5, "z")]);
});

test("an insert strictly inside a deleted range moves to its start; at its edges it just shifts", () => {
  assert.deepEqual(transform(insert(3, "X"), del(1, 4), false), [insert(1, "X")]);
  assert.deepEqual(transform(insert(1, "X"), del(1, 4), false), [insert(1, "X")]);
  assert.deepEqual(transform(insert(5, "X"), del(1, 4), false), [insert(1, "X")]);
  assert.deepEqual(transform(insert(6, "X"), del(1, 4), false), [insert(2, "X")]);
});

test("a delete around a concurrent insert splits into two parts that apply one after the other", () => {
  const t = "0123456789";
  const d = del(2, 6); // removes 234567
  const i = insert(4, "XY");
  const parts = transform(d, i, false);
  assert.equal(parts.length, 2);
  assert.ok(parts.every((p) => p.type === "delete"));
  assert.equal(parts.reduce((n, p) => n + p.length, 0), 6);
  assert.equal(applyAll(apply(t, i), parts), "01XY89");
  assert.deepEqual(transform(i, d, true), [insert(2, "XY")]);
});

test("overlapping deletes shrink, a covered delete vanishes, zero-length edits are no-ops", () => {
  assert.deepEqual(transform(del(2, 4), del(4, 4), false), [del(2, 2)]);
  assert.deepEqual(transform(del(4, 4), del(2, 4), false), [del(2, 2)]);
  assert.deepEqual(transform(del(3, 2), del(1, 6), false), []);
  assert.deepEqual(transform(del(0, 2), del(5, 1), false), [del(0, 2)]);
  assert.deepEqual(transform(del(6, 2), del(1, 3), false), [del(3, 2)]);
  assert.deepEqual(transform(del(3, 0), insert(1, "x"), false), []);
  assert.deepEqual(transform(insert(3, "x"), del(1, 0), false), [insert(3, "x")]);
});

// --- apply and surrogate pairs ----------------------------------------------------------------

test("apply() refuses every position that splits a surrogate pair, and positions outside the text", () => {
  const r = rng(BASE_SEED ^ 0x5a5a);
  let checked = 0;
  for (let round = 0; round < 300; round += 1) {
    const text = randomText(r, 8);
    for (const p of splitPositions(text)) {
      checked += 1;
      assert.throws(() => apply(text, insert(p, "x")), RangeError, `insert at ${p} in ${show(text)}`);
      assert.throws(() => apply(text, del(p, 1)), RangeError, `delete from ${p} in ${show(text)}`);
      if (p >= 1) assert.throws(() => apply(text, del(p - 1, 1)), RangeError, `delete to ${p} in ${show(text)}`);
      assert.throws(() => checkPosition(text, p), RangeError);
    }
    for (const p of boundaries(text)) {
      assert.equal(apply(text, insert(p, "x")), text.slice(0, p) + "x" + text.slice(p));
    }
    assert.throws(() => apply(text, insert(text.length + 1, "x")), RangeError);
    assert.throws(() => apply(text, insert(-1, "x")), RangeError);
    assert.throws(() => apply(text, insert(0.5, "x")), RangeError);
    assert.throws(() => apply(text, del(0, text.length + 1)), RangeError);
    assert.throws(() => apply(text, del(0, -1)), RangeError);
  }
  assert.ok(checked > 100, "the texts held enough pairs");
});

// --- TP1 ------------------------------------------------------------------------------------

test("TP1 for single edits: both orders give one text, over random texts with surrogate pairs", () => {
  const r = rng(BASE_SEED);
  for (let round = 0; round < 3000; round += 1) {
    const t = randomText(r, 10);
    const a = randomOp(r, t);
    const b = randomOp(r, t);
    const aFirst = r.bool();
    const a2 = transform(a, b, aFirst);
    const b2 = transform(b, a, !aFirst);
    const ctx = `seed ${r.seed} round ${round}: t=${show(t)} a=${show(a)} b=${show(b)} aFirst=${aFirst}`;
    let left;
    let right;
    try {
      left = applyAll(apply(t, b), a2);
      right = applyAll(apply(t, a), b2);
    } catch (err) {
      assert.fail(`${ctx}: a transformed edit does not fit (${err.message}); a2=${show(a2)} b2=${show(b2)}`);
    }
    assert.equal(left, right, ctx);
    assert.ok(a2.length <= 2 && b2.length <= 2, ctx);
  }
});

test("TP1 for sequences: transformLists(ops, others) converges, splits included", () => {
  const r = rng(BASE_SEED + 1);
  let splits = 0;
  for (let round = 0; round < 2000; round += 1) {
    const t = randomText(r, 12);
    const ops = randomOps(r, t, r.int(0, 4), apply);
    const others = randomOps(r, t, r.int(0, 4), apply);
    const opsWin = r.bool();
    const [ops2, others2] = transformLists(ops, others, opsWin);
    if (ops2.length > ops.length || others2.length > others.length) splits += 1;
    const ctx = `seed ${r.seed} round ${round}: t=${show(t)} ops=${show(ops)} others=${show(others)} opsWin=${opsWin}`;
    let left;
    let right;
    try {
      left = applyAll(applyAll(t, others), ops2);
      right = applyAll(applyAll(t, ops), others2);
    } catch (err) {
      assert.fail(`${ctx}: ${err.message}; ops2=${show(ops2)} others2=${show(others2)}`);
    }
    assert.equal(left, right, ctx);
  }
  assert.ok(splits > 50, `split deletes were exercised (${splits})`);
});

// Beyond convergence: the characters each side deleted are the ones gone, everything
// inserted is there once, and inserted text sits between the characters it was typed
// between. Every character is unique (private-use code points, BMP and astral).
test("the transformed edits keep each side's intention (unique characters, BMP and astral)", () => {
  const r = rng(BASE_SEED + 2);
  let nextMark = 0;
  const mark = () => {
    nextMark = (nextMark + 1) % 4000;
    return r.bool() ? String.fromCodePoint(0xe000 + nextMark) : String.fromCodePoint(0xf0000 + nextMark);
  };
  const origin = new Map(); // character -> its UTF-16 position in the original text
  const randomUniqueOp = (text) => {
    const op = randomOp(r, text);
    if (op.type === "insert") op.text = Array.from({ length: [...op.text].length }, mark).join("");
    return op;
  };
  for (let round = 0; round < 2000; round += 1) {
    origin.clear();
    let t = "";
    for (let n = r.int(0, 10); n > 0; n -= 1) {
      const ch = mark();
      origin.set(ch, t.length);
      t += ch;
    }
    const a = randomUniqueOp(t);
    const b = randomUniqueOp(t);
    const aFirst = r.bool();
    const result = applyAll(apply(t, b), transform(a, b, aFirst));
    const ctx = `seed ${r.seed} round ${round}: t=${show(t)} a=${show(a)} b=${show(b)} aFirst=${aFirst} → ${show(result)}`;
    const deleted = (op, ch) => op.type === "delete" && origin.get(ch) >= op.position && origin.get(ch) < op.position + op.length;
    const survivors = [...t].filter((ch) => !deleted(a, ch) && !deleted(b, ch));
    const chars = [...result];
    assert.deepEqual(
      chars.filter((ch) => origin.has(ch)),
      survivors,
      `${ctx}: the surviving original characters`,
    );
    for (const op of [a, b]) {
      if (op.type !== "insert") continue;
      const at = result.indexOf(op.text);
      assert.ok(at >= 0, `${ctx}: ${show(op.text)} is there, in one piece`);
      assert.equal(result.indexOf(op.text, at + 1), -1, ctx);
      const before = [...result.slice(0, at)].filter((ch) => origin.has(ch));
      assert.ok(
        before.every((ch) => origin.get(ch) < op.position),
        `${ctx}: nothing typed after ${op.position} lands left of ${show(op.text)}`,
      );
      assert.ok(
        survivors.filter((ch) => origin.get(ch) < op.position).every((ch) => before.includes(ch)),
        `${ctx}: everything before ${op.position} stays left of ${show(op.text)}`,
      );
    }
  }
});

// --- diff and merge -------------------------------------------------------------------------

test("diff(old, new): turns old into new, each op on a character boundary of the text it meets", () => {
  const r = rng(BASE_SEED + 3);
  const cases = [
    ["😀", "😁"], // same high surrogate
    ["😀", "\u{10600}"], // same low surrogate
    ["a😀b", "a😁b"],
    ["x😀", "😀"],
    ["😀😀", "😀"],
    ["", "😀"],
    ["😀", ""],
    ["a\u{10600}", "a😀"],
  ];
  for (let round = 0; round < 2000; round += 1) {
    const old = randomText(r, 8);
    const next = r.bool() ? randomText(r, 8) : applyAll(old, randomOps(r, old, r.int(1, 3), apply));
    cases.push([old, next]);
  }
  for (const [old, next] of cases) {
    const ops = diff(old, next);
    const ctx = `diff(${show(old)}, ${show(next)}) = ${show(ops)}`;
    if (ops.length === 2 && ops[0].type === "delete") assert.equal(ops[1].type, "insert", ctx);
    if (ops.some((op) => op.type === "delete")) assert.ok(ops.length <= 2, ctx);
    let text = old;
    for (const op of ops) {
      assert.ok(boundaries(text).includes(op.position), `${ctx}: starts on a character boundary`);
      if (op.type === "delete") {
        assert.ok(op.length > 0, ctx);
        assert.ok(boundaries(text).includes(op.position + op.length), `${ctx}: ends on a character boundary`);
      } else {
        assert.ok(op.text.length > 0, ctx);
        assert.equal(hasLoneSurrogate(op.text), false, `${ctx}: whole characters inserted, no half pair`);
      }
      text = apply(text, op);
    }
    assert.equal(applyAll(old, ops), next, ctx);
    if (old === next) assert.deepEqual(ops, [], ctx);
  }
});

test("diff of typing spread over the text: a local insert rebased on it stays between its words", () => {
  // two inserts, not one delete of "b" and one insert over the whole span
  assert.deepEqual(diff("<a><b><c>", "<a><x><b><y><c>"), [insert(4, "x><"), insert(8, "><y")]);
  assert.deepEqual(diff("a😀b😀c", "a😀xb😀yc"), [insert(3, "x"), insert(7, "y")]);
  const r = rng(BASE_SEED + 4);
  for (let round = 0; round < 200; round += 1) {
    const words = Array.from({ length: 40 }, (_, i) => `<e${r.int(0, 5)}.${i}>`);
    const old = words.join("");
    for (let k = 0; k < 5; k += 1) words.splice(r.int(0, words.length), 0, `<e${r.int(0, 5)}.${100 + k}>`);
    const next = words.join("");
    const ends = [0, ...[...old].flatMap((ch, i) => (ch === ">" ? [i + 1] : []))];
    const local = [insert(ends[r.int(0, ends.length - 1)], "<W>")];
    const [rebased] = transformLists(local, diff(old, next), false);
    const result = applyAll(next, rebased);
    const tokens = result.match(/<[^<>]*>/g) ?? [];
    assert.equal(tokens.join(""), result, `words kept whole: ${result}`);
    assert.ok(tokens.includes("<W>"), result);
  }
});

test("merge(first, second) joins typing and backspacing runs", () => {
  assert.deepEqual(merge(insert(3, "a"), insert(4, "b")), insert(3, "ab"));
  assert.deepEqual(merge(insert(0, "😀"), insert(2, "x")), insert(0, "😀x"));
  assert.deepEqual(merge(insert(3, "a"), insert(3, "b")), insert(3, "ba"));
  assert.deepEqual(merge(del(5, 1), del(4, 1)), del(4, 2)); // backspace, backspace
  assert.deepEqual(merge(del(4, 1), del(4, 2)), del(4, 3)); // delete, delete
  assert.equal(merge(insert(3, "a"), insert(5, "b")), null);
  assert.equal(merge(del(4, 1), del(2, 1)), null);
  assert.equal(merge(insert(3, "a"), del(3, 1)), null);
  assert.equal(merge(del(3, 1), insert(3, "a")), null);
});

test("merge(first, second), when it merges, equals applying both", () => {
  const r = rng(BASE_SEED + 4);
  let merged = 0;
  for (let round = 0; round < 4000; round += 1) {
    const t = randomText(r, 8);
    const first = randomOp(r, t, { maxDelete: 2 });
    const mid = apply(t, first);
    // bias the second edit towards the first one's edges, where merges happen
    let second = randomOp(r, mid, { maxDelete: 2 });
    if (r.bool(0.6)) {
      const edge = r.pick([first.position, first.position + (first.type === "insert" ? first.text.length : 0)]);
      const nearBounds = boundaries(mid).filter((p) => Math.abs(p - edge) <= 2);
      if (second.type === "insert") second = { ...second, position: r.pick(nearBounds) };
      else {
        const starts = nearBounds.filter((p) => p < mid.length);
        if (starts.length) {
          const start = r.pick(starts);
          const ends = boundaries(mid).filter((p) => p > start && p <= start + 2);
          if (ends.length) second = { type: "delete", position: start, length: r.pick(ends) - start };
        }
      }
    }
    const m = merge(first, second);
    if (m === null) continue;
    merged += 1;
    const ctx = `t=${show(t)} first=${show(first)} second=${show(second)} merged=${show(m)}`;
    assert.equal(m.type, first.type, ctx);
    assert.equal(apply(t, m), apply(mid, second), ctx);
  }
  assert.ok(merged > 300, `enough merges were exercised (${merged})`);
});
