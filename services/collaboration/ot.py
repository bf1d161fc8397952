"""Operational transformation for one shared plain-text document (pure: no I/O, no clock).

Two operations exist, with positions and lengths in UTF-16 code units (JavaScript's indexing):

- ``Insert(position, content)`` puts ``content`` before the unit at ``position``;
- ``Delete(position, length)`` removes units ``[position, position + length)``.

An empty insert or a zero-length delete is a no-op: transforming one gives ``[]``, and
transforming against one leaves the operation as it is.

``transform(op, other, op_first=False)`` rewrites ``op`` so that it applies after ``other``, both
having been made on the same document. Writing ``n`` for the length of an insert, ``[s, e)`` for
the range of a delete and ``p``/``q`` for insert positions, the rules are exactly:

1. Insert ``p`` after Insert ``q``: ``p < q`` stays; ``p > q`` moves to ``p + n``; ``p == q`` is a
   tie that order decides: the operation applied first stays to the left. The server always
   applies ``other`` first, so by default ``op`` moves to ``p + n``; with ``op_first=True`` (``op``
   is ahead of ``other`` in the server's order) ``op`` stays at ``p``.
2. Insert ``p`` after Delete ``[s, e)``: ``p <= s`` stays; ``p >= e`` moves to ``p - (e - s)``;
   ``s < p < e`` (inside the deleted range) moves to ``s``.
3. Delete ``[s, e)`` after Insert ``q`` of length ``n``: ``q <= s`` moves the delete to
   ``[s + n, e + n)``; ``q >= e`` leaves it; ``s < q < e`` splits it around the inserted text into
   ``[Delete(q + n, e - q), Delete(s, q - s)]`` -- the right part first. Both positions then refer
   to the same document (the one after ``other``), and since deleting the right part does not move
   the left part, applying the list in order, one after the other, is also correct.
4. Delete ``[s, e)`` after Delete ``[t, f)``: disjoint ranges shift (``e <= t`` stays, ``s >= f``
   moves left by ``f - t``); overlapping ranges lose the overlap and start at ``min(s, t)``; a
   delete that loses everything becomes ``[]``.

Convergence (TP1), for ``a`` and ``b`` made on the same text ``t`` with ``a`` first in the order::

    apply_all(apply(t, a), transform(b, a))
        == apply_all(apply(t, b), transform(a, b, op_first=True))

The server uses ``transform_against(op, history)``: ``op`` is transformed against each operation
applied since its base version, one at a time and in order (never against a composed history).
When a delete splits, every part is transformed on against the rest of the history; the parts stay
in descending position order, so at every step they are deletes on one and the same document, and
the final list applies one after the other in order. Parts that end up touching (the insert that
split them was deleted later) are merged back into one.

A client mirrors the rules with the roles swapped: on receiving server operation ``S`` while its
own ``P`` (made on the same version) is unacknowledged, it applies
``transform_against(S, [P], op_first=True)`` locally (the server applied ``S`` first, so ``S``
keeps the left place in a tie) and keeps ``transform(P, S)`` as its pending operation (what the
server will compute for ``P``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias, overload

from .ot_errors import DeleteMismatch, LoneSurrogate
from .utf16 import has_lone_surrogate, utf16_len, utf16_to_index

__all__ = [
    "Insert",
    "Delete",
    "Op",
    "transform",
    "transform_against",
    "apply",
    "apply_all",
]


@dataclass(frozen=True, slots=True)
class Insert:
    position: int
    content: str
    length: int = field(init=False, repr=False, compare=False)  # UTF-16 units of content

    def __post_init__(self) -> None:
        object.__setattr__(self, "length", utf16_len(self.content))

    @property
    def end(self) -> int:
        return self.position + self.length


@dataclass(frozen=True, slots=True)
class Delete:
    position: int
    length: int

    @property
    def end(self) -> int:
        return self.position + self.length


Op: TypeAlias = Insert | Delete


def _moved(p: int, other: Op, op_first: bool) -> int:
    """An insert's position ``p`` after ``other`` (rules 1 and 2)."""
    q = other.position
    if isinstance(other, Insert):
        return p + other.length if p > q or (p == q and not op_first) else p
    if p <= q:
        return p
    return p - other.length if p >= q + other.length else q


def _transform_insert(op: Insert, other: Op, op_first: bool) -> Insert:
    p = _moved(op.position, other, op_first)
    return op if p == op.position else Insert(p, op.content)


def _transform_delete(op: Delete, other: Op) -> list[Delete]:
    s, e = op.position, op.end
    if isinstance(other, Insert):
        q, n = other.position, other.length
        if q >= e or n == 0:
            return [op]
        if q <= s:
            return [Delete(s + n, op.length)]
        return [Delete(q + n, e - q), Delete(s, q - s)]
    t, f = other.position, other.end
    if e <= t:
        return [op]
    if s >= f:
        return [Delete(s - other.length, op.length)]
    rest = op.length - (min(e, f) - max(s, t))
    return [Delete(min(s, t), rest)] if rest else []


def _is_noop(op: Op) -> bool:
    return op.length == 0


@overload
def transform(op: Insert, other: Op, *, op_first: bool = False) -> list[Insert]: ...
@overload
def transform(op: Delete, other: Op, *, op_first: bool = False) -> list[Delete]: ...
@overload
def transform(op: Op, other: Op, *, op_first: bool = False) -> list[Op]: ...


def transform(
    op: Op, other: Op, *, op_first: bool = False
) -> list[Insert] | list[Delete] | list[Op]:
    """``op`` rewritten to apply after ``other``; both were made on the same document.

    Returns ``[]`` (nothing left to do), one operation, or -- for a delete split by an insert --
    two deletes, right part first. ``op_first`` decides the insert/insert tie (module docstring).
    """
    if _is_noop(op):
        return []
    if isinstance(op, Insert):
        return [_transform_insert(op, other, op_first)]
    return _transform_delete(op, other)


def _merge_touching(parts: list[Delete]) -> list[Delete]:
    """Merge neighbours of a descending list of deletes whose ranges touch."""
    out: list[Delete] = []
    for part in parts:
        if out and part.end == out[-1].position:
            out[-1] = Delete(part.position, part.length + out[-1].length)
        else:
            out.append(part)
    return out


@overload
def transform_against(
    op: Insert, history: Iterable[Op], *, op_first: bool = False
) -> list[Insert]: ...
@overload
def transform_against(
    op: Delete, history: Iterable[Op], *, op_first: bool = False
) -> list[Delete]: ...
@overload
def transform_against(op: Op, history: Iterable[Op], *, op_first: bool = False) -> list[Op]: ...


def transform_against(
    op: Op, history: Iterable[Op], *, op_first: bool = False
) -> list[Insert] | list[Delete] | list[Op]:
    """``op`` transformed against each operation of ``history`` in turn (applied in that order).

    The result applies in order, one operation after the other, to the document after
    ``history``; it is ``[]`` if nothing is left, and can hold several deletes if inserts split a
    delete (right part first, touching parts merged).
    """
    if isinstance(op, Insert):
        if _is_noop(op):
            return []
        # Moved on the position alone: a hot document transforms each edit against every edit
        # made meanwhile, so no Insert per step.
        p = op.position
        for applied in history:
            p = _moved(p, applied, op_first)
        return [op if p == op.position else Insert(p, op.content)]
    parts: list[Delete] = [] if _is_noop(op) else [op]
    for applied in history:
        if not parts:
            break
        parts = [q for part in parts for q in _transform_delete(part, applied)]
    return _merge_touching(parts)


def apply(text: str, op: Op, *, expected: str | None = None) -> str:
    """``text`` with ``op`` applied.

    Raises ``OutOfRange``, ``SplitsSurrogate`` (a position inside an astral character),
    ``LoneSurrogate`` (inserted content holding an unpaired surrogate) or, when ``expected`` is
    given for a delete, ``DeleteMismatch`` if the removed text differs from it.
    """
    if isinstance(op, Insert):
        if has_lone_surrogate(op.content):
            raise LoneSurrogate("inserted content holds a lone surrogate")
        i = utf16_to_index(text, op.position)
        return text[:i] + op.content + text[i:]
    i = utf16_to_index(text, op.position)
    j = utf16_to_index(text, op.length, i)
    if expected is not None and text[i:j] != expected:
        raise DeleteMismatch("delete content differs from the text it removes")
    return text[:i] + text[j:]


def apply_all(text: str, ops: Iterable[Op]) -> str:
    """``text`` with ``ops`` applied one after the other."""
    for op in ops:
        text = apply(text, op)
    return text
