"""Operational transformation of plain-text edits, sans-I/O and self-contained.

Operations are :class:`Insert` and :class:`Delete`; positions and lengths count UTF-16
code units, as JavaScript strings (and docs/protocol.md, "Collaboration") index them. The
rules mirror the server's:

* insert vs insert at the same position: the op the server applied first stays left;
* an insert strictly inside a deleted range moves to the start of that range;
* a delete whose range strictly contains a concurrent insert position is split into the
  part before and the part after the inserted text (applied one after the other);
* overlapping deletes shrink; a delete fully covered by another becomes nothing.

A transformed operation is therefore a *list* of operations, applied in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "Delete",
    "Insert",
    "Op",
    "apply",
    "apply_all",
    "diff",
    "merge",
    "transform",
    "transform_lists",
    "utf16_len",
]


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (astral characters count 2)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True, slots=True)
class Insert:
    position: int
    text: str

    @property
    def length(self) -> int:
        return utf16_len(self.text)


@dataclass(frozen=True, slots=True)
class Delete:
    position: int
    length: int


Op: TypeAlias = Insert | Delete


def _index(text: str, position: int) -> int:
    """The ``str`` index of UTF-16 offset ``position`` in ``text``.

    Raises ``ValueError`` when ``position`` lies outside ``text`` or between the two
    halves of a surrogate pair (the server refuses such edits too).
    """
    if position < 0:
        raise ValueError(f"position {position} is negative")
    if text.isascii() or max(text) <= "\uffff":
        if position > len(text):
            raise ValueError(f"position {position} is past the end ({len(text)})")
        return position
    units = text.encode("utf-16-le")
    if 2 * position > len(units):
        raise ValueError(f"position {position} is past the end ({len(units) // 2})")
    try:
        return len(units[: 2 * position].decode("utf-16-le"))
    except UnicodeDecodeError:
        raise ValueError(f"position {position} splits a surrogate pair") from None


def apply(text: str, op: Op) -> str:
    """``text`` with ``op`` applied; ``ValueError`` if ``op`` does not fit ``text``."""
    start = _index(text, op.position)
    if isinstance(op, Insert):
        return text[:start] + op.text + text[start:]
    if op.length < 0:
        raise ValueError("delete length is negative")
    end = _index(text, op.position + op.length)
    return text[:start] + text[end:]


def apply_all(text: str, ops: Iterable[Op]) -> str:
    for op in ops:
        text = apply(text, op)
    return text


def transform(op: Op, other: Op, *, wins_tie: bool) -> list[Op]:
    """``op`` rewritten to apply after ``other``, both made on the same text.

    ``wins_tie``: ``op`` was applied first by the server, so of two inserts at one
    position ``op`` stays left. The result has 0, 1 or 2 operations.
    """
    if isinstance(op, Delete) and op.length == 0:
        return []
    if isinstance(other, Delete) and other.length == 0:
        return [op]
    if isinstance(op, Insert):
        if isinstance(other, Insert):
            if other.position < op.position or (other.position == op.position and not wins_tie):
                return [Insert(op.position + other.length, op.text)]
            return [op]
        if op.position <= other.position:
            return [op]
        if op.position >= other.position + other.length:
            return [Insert(op.position - other.length, op.text)]
        return [Insert(other.position, op.text)]  # inside the deleted range
    start, end = op.position, op.position + op.length
    if isinstance(other, Insert):
        if other.position <= start:
            return [Delete(start + other.length, op.length)]
        if other.position >= end:
            return [op]
        before = other.position - start
        return [Delete(start, before), Delete(start + other.length, op.length - before)]
    o_start, o_end = other.position, other.position + other.length
    if o_end <= start:
        return [Delete(start - other.length, op.length)]
    if o_start >= end:
        return [op]
    rest = op.length - (min(end, o_end) - max(start, o_start))
    return [Delete(min(start, o_start), rest)] if rest > 0 else []


def transform_lists(
    ops: Sequence[Op], others: Sequence[Op], *, ops_win_ties: bool
) -> tuple[list[Op], list[Op]]:
    """Transform two sequences made on the same text past each other.

    Returns ``(ops2, others2)`` with
    ``apply_all(apply_all(t, others), ops2) == apply_all(apply_all(t, ops), others2)``.
    """
    result: list[Op] = []
    remaining = list(others)
    for op in ops:
        parts: list[Op] = [op]
        transformed: list[Op] = []
        for other in remaining:
            parts, other_parts = _parts_vs_one(parts, other, ops_win_ties)
            transformed.extend(other_parts)
        result.extend(parts)
        remaining = transformed
    return result, remaining


def _parts_vs_one(parts: list[Op], other: Op, parts_win: bool) -> tuple[list[Op], list[Op]]:
    if len(parts) == 1:
        return (
            transform(parts[0], other, wins_tie=parts_win),
            transform(other, parts[0], wins_tie=not parts_win),
        )
    other_parts, parts_out = transform_lists([other], parts, ops_win_ties=not parts_win)
    return parts_out, other_parts


def diff(old: str, new: str) -> list[Op]:
    """Operations turning ``old`` into ``new`` (whole code points, never half a pair).

    Around the longest common prefix and suffix, the middle is one insert or one delete, or
    several inserts when the old middle is kept, in order, in the new one: others' typing
    spread over the document, as a resync after missed edits sees it. Local edits waiting to be
    sent are rebased on these, so each keeps its place between the characters it was typed
    between; one delete over the whole changed span would pull them to its start, into the
    middle of someone else's words. Anything else is one delete then one insert."""
    limit = min(len(old), len(new))
    prefix = 0
    while prefix < limit and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    position = utf16_len(old[:prefix])
    removed = old[prefix : len(old) - suffix]
    inserted = new[prefix : len(new) - suffix]
    if removed and len(removed) < len(inserted):
        spread = _interleave(removed, inserted, position)
        if spread is not None:
            return spread
    ops: list[Op] = []
    if removed:
        ops.append(Delete(position, utf16_len(removed)))
    if inserted:
        ops.append(Insert(position, inserted))
    return ops


def _interleave(short: str, long: str, position: int) -> list[Op] | None:
    """When ``short`` is a subsequence of ``long``: the inserts turning it into ``long``, each
    at its place in the text as the ones before it left it (from ``position``); else ``None``."""
    ops: list[Op] = []
    j = 0
    for ch in short:
        k = long.find(ch, j)
        if k < 0:
            return None
        if k > j:
            ops.append(Insert(position, long[j:k]))
            position += utf16_len(long[j:k])
        position += utf16_len(ch)
        j = k + 1
    if j < len(long):
        ops.append(Insert(position, long[j:]))
    return ops


def merge(first: Op, second: Op) -> Op | None:
    """One operation equal to ``first`` then ``second``, for typing and backspacing runs;
    ``None`` when they are not adjacent."""
    if isinstance(first, Insert) and isinstance(second, Insert):
        if second.position == first.position + first.length:
            return Insert(first.position, first.text + second.text)
        if second.position == first.position:
            return Insert(first.position, second.text + first.text)
        return None
    if isinstance(first, Delete) and isinstance(second, Delete):
        if second.position == first.position:
            return Delete(first.position, first.length + second.length)
        if second.position + second.length == first.position:
            return Delete(second.position, first.length + second.length)
    return None
