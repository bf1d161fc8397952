"""The browser client's OT (clients/js/src) agrees with the server's (services/collaboration/ot.py).

A few hundred random cases (fixed seed, texts full of astral characters) are computed here with
the server's ``transform``/``transform_against`` and by ONE ``node`` subprocess with the JS
client's ``transform`` and ``SharedDocument``. Positions are UTF-16 code units on both sides (the
server's ``Insert``/``Delete`` positions already are; JSON carries astral characters as surrogate
pair escapes, which JavaScript reads as two code units).

Where a concurrent insert splits a delete, both sides produce two deletes that apply one after
the other, but in a different order: the server right part first, the client left part first.
Both are correct; the parts are compared as the set of units they delete, and their number must
match (each part gets a version of its own, so the client predicts its ack version from it).

Skipped when ``node`` is missing, unless ``AG_REQUIRE_JS=1``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.collaboration.ot import Delete, Insert, Op, apply, apply_all, transform
from services.collaboration.ot import transform_against as server_transform_against

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "js" / "src" / "atomic-guide.js"
SEED = 20260105
# 😀 U+1F600 and 😁 U+1F601 share a high surrogate, U+10600 shares 😀's low one.
ALPHABET = ["a", "b", " ", "é", "中", "😀", "😁", "🐀", "\U00010600", "𝄞"]

JsonOp = dict[str, Any]

ORACLE = """
const { ot, SharedDocument } = await import(%s);
let input = "";
for await (const chunk of process.stdin) input += chunk;
const { pairs, pending } = JSON.parse(input);
const pairResults = pairs.map(({ a, b }) => ({
  bAfterA: ot.transform(b, a, false),
  aAfterB: ot.transform(a, b, true),
}));
const pendingResults = pending.map(({ text, op, history }) => {
  const doc = new SharedDocument(text, 0);
  doc.local(op);
  history.forEach((applied, k) => doc.remote(applied, k + 1));
  return { pieces: doc.inflight, text: doc.text };
});
process.stdout.write(JSON.stringify({ pairs: pairResults, pending: pendingResults }));
"""


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def boundaries(text: str) -> list[int]:
    """UTF-16 offsets of ``text`` that do not split a surrogate pair."""
    out = [0]
    for ch in text:
        out.append(out[-1] + utf16_len(ch))
    return out


def random_text(rnd: random.Random, max_chars: int = 10) -> str:
    return "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, max_chars)))


def random_op(rnd: random.Random, text: str) -> Op:
    """An edit the gateway accepts: non-empty inserts, deletes of whole characters."""
    bounds = boundaries(text)
    if len(bounds) == 1 or rnd.random() < 0.5:
        content = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(1, 3)))
        return Insert(rnd.choice(bounds), content)
    i = rnd.randint(0, len(bounds) - 2)
    j = rnd.randint(i + 1, min(len(bounds) - 1, i + 5))
    return Delete(bounds[i], bounds[j] - bounds[i])


def to_json(op: Op) -> JsonOp:
    if isinstance(op, Insert):
        return {"type": "insert", "position": op.position, "text": op.content}
    return {"type": "delete", "position": op.position, "length": op.length}


def from_json(op: JsonOp) -> Op:
    if op["type"] == "insert":
        return Insert(int(op["position"]), str(op["text"]))
    return Delete(int(op["position"]), int(op["length"]))


def deleted_units(units: int, ops: list[Op]) -> list[tuple[int, int]]:
    """The ``[start, end)`` runs of a ``units``-long document that ``ops`` (deletes applied one
    after the other) remove, in that document's coordinates."""
    alive = list(range(units))
    for op in ops:
        assert isinstance(op, Delete), op
        del alive[op.position : op.position + op.length]
    gone = sorted(set(range(units)) - set(alive))
    runs: list[tuple[int, int]] = []
    for unit in gone:
        if runs and runs[-1][1] == unit:
            runs[-1] = (runs[-1][0], unit + 1)
        else:
            runs.append((unit, unit + 1))
    return runs


def assert_same_ops(server: list[Op], client: list[Op], document: str, context: str) -> None:
    """Equal lists, or for the parts of a split delete: as many parts, deleting the same units."""
    if server == client:
        return
    assert len(server) == len(client), f"{context}: server {server}, client {client}"
    units = utf16_len(document)
    assert deleted_units(units, server) == deleted_units(units, client), (
        f"{context}: server {server}, client {client}"
    )


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        if os.environ.get("AG_REQUIRE_JS") == "1":
            pytest.fail("node is not on PATH and AG_REQUIRE_JS=1")
        pytest.skip("node is not on PATH (set AG_REQUIRE_JS=1 to fail instead)")
    return found


@pytest.fixture(scope="module")
def cases() -> dict[str, list[dict[str, Any]]]:
    rnd = random.Random(SEED)
    pairs: list[dict[str, Any]] = []
    for _ in range(600):
        text = random_text(rnd)
        pairs.append({"text": text, "a": random_op(rnd, text), "b": random_op(rnd, text)})
    pending: list[dict[str, Any]] = []
    for _ in range(400):
        text = random_text(rnd, 12)
        op = random_op(rnd, text)
        if rnd.random() < 0.7:  # mostly deletes: they are the ones that split
            bounds = boundaries(text)
            if len(bounds) > 2:
                i = rnd.randint(0, len(bounds) - 3)
                j = rnd.randint(i + 2, len(bounds) - 1)
                op = Delete(bounds[i], bounds[j] - bounds[i])
        history: list[Op] = []
        current = text
        for _ in range(rnd.randint(1, 4)):
            applied = random_op(rnd, current)
            last = history[-1] if history else None
            if isinstance(last, Insert) and rnd.random() < 0.4:
                applied = Delete(last.position, last.length)  # typed, then deleted again
            history.append(applied)
            current = apply(current, applied)
        pending.append({"text": text, "op": op, "history": history})
    return {"pairs": pairs, "pending": pending}


@pytest.fixture(scope="module")
def js_results(node: str, cases: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    payload = {
        "pairs": [{"a": to_json(c["a"]), "b": to_json(c["b"])} for c in cases["pairs"]],
        "pending": [
            {
                "text": c["text"],
                "op": to_json(c["op"]),
                "history": [to_json(h) for h in c["history"]],
            }
            for c in cases["pending"]
        ],
    }
    script = ORACLE % json.dumps(CLIENT.as_uri())
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(done.stdout)
    return results


def test_transform_of_two_concurrent_edits_matches_the_server(
    cases: dict[str, list[dict[str, Any]]], js_results: dict[str, Any]
) -> None:
    splits = 0
    for n, (case, result) in enumerate(zip(cases["pairs"], js_results["pairs"], strict=True)):
        text: str = case["text"]
        a: Op = case["a"]
        b: Op = case["b"]
        context = f"case {n}: text={text!r} a={a} b={b}"
        # the server applied a first: b is transformed past it and loses an insert tie
        server_b = transform(b, a)
        client_b = [from_json(op) for op in result["bAfterA"]]
        assert_same_ops(server_b, client_b, apply(text, a), f"{context}, b after a")
        server_a = transform(a, b, op_first=True)
        client_a = [from_json(op) for op in result["aAfterB"]]
        assert_same_ops(server_a, client_a, apply(text, b), f"{context}, a after b")
        assert apply_all(apply(text, a), client_b) == apply_all(apply(text, b), client_a), context
        splits += len(server_b) == 2
    assert splits > 20, f"split deletes were exercised ({splits})"


def test_pending_edit_pieces_match_the_parts_the_server_applies(
    cases: dict[str, list[dict[str, Any]]], js_results: dict[str, Any]
) -> None:
    """A client's unacknowledged edit, transformed past the remote edits the server applied
    before it, is what the server applies: the same units, and as many parts (versions)."""
    mismatched: list[str] = []
    for n, (case, result) in enumerate(zip(cases["pending"], js_results["pending"], strict=True)):
        text: str = case["text"]
        op: Op = case["op"]
        history: list[Op] = case["history"]
        after_history = apply_all(text, history)
        server_parts = server_transform_against(op, history)
        client_pieces = [from_json(piece) for piece in result["pieces"]]
        context = f"case {n}: text={text!r} op={op} history={history}"
        assert result["text"] == apply_all(after_history, server_parts), context
        try:
            assert_same_ops(server_parts, client_pieces, after_history, context)
        except AssertionError as exc:
            mismatched.append(str(exc))
    assert not mismatched, (
        f"{len(mismatched)} of {len(cases['pending'])} pending edits differ, e.g.\n"
        + "\n".join(mismatched[:3])
    )
