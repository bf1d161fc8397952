"""The client-side OT of the bench and the simulation test, against the server's Document.

A model network: each client has a FIFO channel to the server and one back, as a socket gives.
The server applies edits with ``Document.submit`` (the service's path) and answers with a
broadcast per applied part to the others and an ack to the sender, in that order. Steps are
interleaved at random; at the end every client must hold the server's text and version.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import pytest

from ops.sim.editor import Editor, op_of, random_op, xform
from services.collaboration.document import Document
from services.collaboration.ot import Delete, Insert, Op, apply_all

Msg = tuple[str, Any]  # ("edit", data) | ("ack", version)


def server_apply(doc: Document, data: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    op: Op
    if data["operation"] == "insert":
        op = Insert(data["position"], data["content"])
    else:
        op = Delete(data["position"], data["length"])
    applied = doc.submit(
        op, data["version"], data.get("content") if isinstance(op, Delete) else None
    )
    frames = []
    for done, version in applied:
        if isinstance(done, Insert):
            frames.append(
                {
                    "operation": "insert",
                    "position": done.position,
                    "content": done.content,
                    "version": version,
                }
            )
        else:
            frames.append(
                {
                    "operation": "delete",
                    "position": done.position,
                    "length": done.length,
                    "version": version,
                }
            )
    return frames, doc.version


def simulate(seed: int, clients: int = 4, steps: int = 400, overtake: float = 0.0) -> None:
    rng = random.Random(seed)
    doc = Document("hello 😀 world")
    eds = [Editor(doc.content, doc.version) for _ in range(clients)]
    up: list[deque[dict[str, Any]]] = [deque() for _ in eds]
    down: list[deque[Msg]] = [deque() for _ in eds]

    def deliver(i: int) -> None:
        q = down[i]
        if len(q) > 1 and q[0][0] == "ack" and q[1][0] == "edit" and rng.random() < overtake:
            q[0], q[1] = q[1], q[0]  # a broadcast overtakes the ack before it
        kind, payload = q.popleft()
        if kind == "edit":
            eds[i].remote(op_of(payload), payload["version"])
        else:
            nxt = eds[i].ack(payload)
            if nxt is not None:
                up[i].append(nxt)

    for _ in range(steps):
        i = rng.randrange(clients)
        action = rng.random()
        if action < 0.35:
            nxt = eds[i].local(random_op(rng, eds[i].text, target_units=60))
            if nxt is not None:
                up[i].append(nxt)
        elif action < 0.65 and up[i]:
            frames, version = server_apply(doc, up[i].popleft())
            for j in range(clients):
                if j != i:
                    down[j].extend(("edit", f) for f in frames)
            down[i].append(("ack", version))
        elif down[i]:
            deliver(i)
    while any(up) or any(down):
        for i in range(clients):
            while up[i]:
                frames, version = server_apply(doc, up[i].popleft())
                for j in range(clients):
                    if j != i:
                        down[j].extend(("edit", f) for f in frames)
                down[i].append(("ack", version))
            while down[i]:
                deliver(i)
    for ed in eds:
        assert ed.synced
        assert ed.version == doc.version
        assert ed.text == ed.confirmed == doc.content


@pytest.mark.parametrize("seed", range(150))
def test_clients_converge_on_the_servers_text(seed: int) -> None:
    simulate(seed)


@pytest.mark.parametrize("seed", range(50))
def test_clients_converge_when_broadcasts_overtake_acks(seed: int) -> None:
    simulate(seed, clients=3, overtake=0.5)


def test_xform_of_sequences_converges() -> None:
    rng = random.Random(7)
    for _ in range(500):
        text = "ab😀cdefg中文"
        a = [random_op(rng, text)]
        a.append(random_op(rng, apply_all(text, a)))
        b = [random_op(rng, text)]
        a2, b2 = xform(a, b, a_first=False)
        assert apply_all(apply_all(text, b), a2) == apply_all(apply_all(text, a), b2)
