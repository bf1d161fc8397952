"""A simulated collaboration client (sans-I/O), shared by the benchmarks and the tests.

``Editor`` keeps one client's copy of a document the way a real client must: the server's text at
a version, at most one edit in flight, later local edits buffered, incoming edits transformed
against both (``xform``), edits that overtook their ack held until the gap is filled.
"""

from __future__ import annotations

import random
from typing import Any

from services.collaboration.ot import Delete, Insert, Op, apply, apply_all, transform
from services.collaboration.utf16 import index_to_utf16, utf16_len, utf16_slice

__all__ = ["Editor", "op_of", "random_op", "xform"]

_WORDS = ["lorem", "ipsum", "dolor", "😀", "naïve", "中文", "👍🏽", "\n", " "]


def xform(a: list[Op], b: list[Op], a_first: bool = False) -> tuple[list[Op], list[Op]]:
    """Two operation sequences made on the same text: (``a`` after ``b``, ``b`` after ``a``).

    ``a_first``: ``a`` is ahead in the server's order (wins insert ties).
    """
    if not a or not b:
        return a, b
    if len(a) == 1 and len(b) == 1:
        return transform(a[0], b[0], op_first=a_first), transform(b[0], a[0], op_first=not a_first)
    if len(a) > 1:
        a1, b1 = xform(a[:1], b, a_first)
        a2, b2 = xform(a[1:], b1, a_first)
        return a1 + a2, b2
    a1, b1 = xform(a, b[:1], a_first)
    a2, b2 = xform(a1, b[1:], a_first)
    return a2, b1 + b2


class Editor:
    """One client's copy of a document: the server's text at ``version`` (``confirmed``), at most
    one edit in flight (as the server will have transformed it), and later local edits.

    It relies on the server's order: a connection's ack comes after the edits applied before it.
    Edits that arrive ahead of a gap (an ack overtaken) wait in ``ahead`` until it is filled.
    """

    def __init__(self, content: str = "", version: int = 0) -> None:
        self.reset(content, version)

    def reset(self, content: str, version: int) -> None:
        """Take the server's state (a snapshot); unsent and unacknowledged edits are dropped."""
        self.confirmed = self.text = content
        self.version = version
        self.inflight: list[Op] | None = None
        self.buffer: list[Op] = []
        self.ahead: dict[int, Op] = {}

    @property
    def synced(self) -> bool:
        return self.inflight is None and not self.buffer

    def local(self, op: Op) -> dict[str, Any] | None:
        """Apply a local edit; the ``edit`` data to send now, or None if one is in flight."""
        self.text = apply(self.text, op)
        self.buffer.append(op)
        return self._next() if self.inflight is None else None

    def remote(self, op: Op, version: int) -> None:
        if version > self.version:
            self.ahead[version] = op
            self._drain()

    def ack(self, version: int) -> dict[str, Any] | None:
        """Our edit is applied, the last part as ``version``; the next edit to send, if any."""
        if self.inflight is not None:
            self.confirmed = apply_all(self.confirmed, self.inflight)
        self.inflight = None
        self.version = max(self.version, version)
        self._drain()
        return self._next()

    def _drain(self) -> None:
        while self.version + 1 in self.ahead:
            op = self.ahead.pop(self.version + 1)
            self.confirmed = apply(self.confirmed, op)
            theirs = [op]
            if self.inflight is not None:
                self.inflight, theirs = xform(self.inflight, theirs)
            self.buffer, theirs = xform(self.buffer, theirs)
            self.text = apply_all(self.text, theirs)
            self.version += 1
        for v in [v for v in self.ahead if v <= self.version]:
            del self.ahead[v]

    def _next(self) -> dict[str, Any] | None:
        if not self.buffer:
            return None
        op = self.buffer.pop(0)
        self.inflight = [op]
        if isinstance(op, Insert):
            return {
                "operation": "insert",
                "position": op.position,
                "content": op.content,
                "version": self.version,
            }
        end = op.position + op.length
        removed = utf16_slice(self.confirmed, op.position, end)
        return {
            "operation": "delete",
            "position": op.position,
            "length": op.length,
            "content": removed,
            "version": self.version,
        }


def op_of(data: dict[str, Any]) -> Op:
    """The operation of a server ``edit`` frame's data."""
    if data["operation"] == "insert":
        return Insert(data["position"], data["content"])
    return Delete(data["position"], data["length"])


def random_op(rng: random.Random, text: str, target_units: int = 2000) -> Op:
    """An insert or delete at character boundaries of ``text`` (never inside a surrogate pair)."""
    i = rng.randrange(len(text) + 1)
    if not text or utf16_len(text) < target_units and rng.random() < 0.65:
        words = "".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        return Insert(index_to_utf16(text, i), words)
    i = min(i, len(text) - 1)
    j = min(len(text), i + rng.randint(1, 8))
    start = index_to_utf16(text, i)
    return Delete(start, index_to_utf16(text, j) - start)
