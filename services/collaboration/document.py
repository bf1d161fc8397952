"""One collaborative document as a sans-I/O state machine: text, version, bounded history.

``submit`` is the server's edit path: it takes an operation made on ``base_version``, transforms
it against every operation applied since (``ot.transform_against`` rules), validates the result
against the current text, applies it and returns each applied operation with its new version.
``replay`` re-applies an operation that ``submit`` already produced (from a log, during a
rebuild); ``snapshot``/``restore`` save and load the whole state.

Validation of an edit:

- against the text at ``base_version`` (known exactly, because each history entry records the
  document's length before it): the range must lie inside the document, lengths and positions
  must not be negative (``OutOfRange``); inserted text and delete ``content`` must hold no lone
  surrogate (``LoneSurrogate``); a delete ``content`` must be ``length`` units long
  (``DeleteMismatch``).
- against the current text, after transformation: positions must not split a surrogate pair
  (``SplitsSurrogate``) and the document must stay within ``max_bytes`` of UTF-8 (``TooLarge``).
  A position that split a pair at the base version still splits it now unless a concurrent delete
  removed that character, in which case the edit lands at the delete's start and is harmless; so
  the document never holds a lone surrogate.
- delete ``content``, when given, is checked unit for unit against the text at the base version:
  each history entry keeps the text a delete removed, so while the delete is transformed, the
  part of ``content`` that a concurrent delete already removed is compared with what that delete
  removed, and the rest with what is removed now (``DeleteMismatch`` on any difference).

Nothing changes unless the whole edit is valid: all parts are staged on a copy first. The history
keeps the last ``max_history`` applied operations (with their removed text, so its memory is at
most about twice the edits it holds); a base version older than that gets ``VersionMismatch``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from .ot import Delete, Insert, Op, transform, transform_against
from .ot_errors import (
    DeleteMismatch,
    LoneSurrogate,
    OutOfRange,
    SplitsSurrogate,
    TooLarge,
    VersionMismatch,
)
from .utf16 import (
    has_lone_surrogate,
    utf8_len,
    utf16_back_to_index,
    utf16_len,
    utf16_slice,
    utf16_to_index,
)

__all__ = ["Document", "Snapshot"]

DEFAULT_MAX_HISTORY = 1000
DEFAULT_MAX_BYTES = 1 << 20


class Snapshot(NamedTuple):
    content: str
    version: int


@dataclass(frozen=True, slots=True)
class _Entry:
    op: Op
    version: int  # the version this operation produced
    removed: str  # what a delete removed ("" for an insert)
    units_before: int  # document length in UTF-16 units before the operation


_Piece = tuple[Delete, str]  # a part of a checked delete and the content it must remove


class Document:
    __slots__ = ("_content", "_version", "_units", "_bytes", "_anchor", "_history", "max_bytes")

    def __init__(
        self,
        content: str = "",
        version: int = 0,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_history < 0 or max_bytes < 0:
            raise ValueError("max_history and max_bytes must not be negative")
        self.max_bytes = max_bytes
        self._history: deque[_Entry] = deque(maxlen=max_history)
        self._content = ""
        self._version = 0
        self._units = 0
        self._bytes = 0
        self._anchor = (0, 0)
        self.restore(content, version)

    @property
    def content(self) -> str:
        return self._content

    @property
    def version(self) -> int:
        return self._version

    @property
    def length(self) -> int:
        """Length in UTF-16 code units."""
        return self._units

    @property
    def size(self) -> int:
        """Size in UTF-8 bytes."""
        return self._bytes

    @property
    def max_history(self) -> int:
        maxlen = self._history.maxlen
        assert maxlen is not None
        return maxlen

    @property
    def oldest_version(self) -> int:
        """The oldest base version ``submit`` still accepts."""
        return self._version - len(self._history)

    def snapshot(self) -> Snapshot:
        return Snapshot(self._content, self._version)

    def restore(self, content: str, version: int) -> None:
        """Replace the whole state; the history restarts empty at ``version``.

        The size cap is not applied: it guards new edits, and a stored document is taken as it is.
        """
        if version < 0:
            raise ValueError("version must not be negative")
        if has_lone_surrogate(content):
            raise LoneSurrogate("document holds a lone surrogate")
        self._content = content
        self._version = version
        self._units = utf16_len(content)
        self._bytes = utf8_len(content)
        self._anchor = (0, 0)
        self._history.clear()

    def ops_since(self, version: int) -> list[tuple[Op, int]]:
        """The operations applied after ``version``, each with the version it produced."""
        return [(e.op, e.version) for e in self._since(version)]

    def submit(
        self, op: Op, base_version: int, delete_content: str | None = None
    ) -> list[tuple[Op, int]]:
        """Transform ``op`` (made on ``base_version``) to the current version and apply it.

        Returns the applied operations with their new versions: ``[]`` if the edit transformed to
        nothing (no change, no new version), usually one, several for a delete that concurrent
        inserts split (right part first; each applies after the one before it).
        """
        history = self._since(base_version)
        units_at_base = history[0].units_before if history else self._units
        end = op.end if isinstance(op, Delete) else op.position
        if op.position < 0 or op.length < 0 or end > units_at_base:
            raise OutOfRange(f"{op} is outside the document ({units_at_base} units)")
        if isinstance(op, Insert):
            if delete_content is not None:
                raise ValueError("delete_content is for deletes only")
            if has_lone_surrogate(op.content):
                raise LoneSurrogate("inserted content holds a lone surrogate")
            pieces: list[tuple[Op, str | None]] = [
                (part, None) for part in transform_against(op, [e.op for e in history])
            ]
        else:
            if delete_content is not None:
                if has_lone_surrogate(delete_content):
                    raise LoneSurrogate("delete content holds a lone surrogate")
                if utf16_len(delete_content) != op.length:
                    raise DeleteMismatch("delete content length differs from the delete length")
            pieces = list(_transform_checked(op, delete_content, history)) if op.length else []
        return self._commit(pieces, cap=True)

    def replay(self, op: Op, version: int) -> bool:
        """Re-apply ``op``, already transformed and logged as producing ``version``.

        Returns False (and changes nothing) for a version this document already has, so a log
        replayed over a snapshot may start early; raises ``VersionMismatch`` for a gap. Range and
        surrogates are checked, the size cap is not (the operation was accepted once).
        """
        if version <= self._version:
            return False
        if version != self._version + 1:
            raise VersionMismatch(self._version, version)
        self._commit([(op, None)], cap=False)
        return True

    def _since(self, version: int) -> list[_Entry]:
        if not self.oldest_version <= version <= self._version:
            raise VersionMismatch(self._version, version)
        # Read from the newest end: a client is usually a few versions behind, not max_history.
        newest = list(islice(reversed(self._history), self._version - version))
        newest.reverse()
        return newest

    def _commit(
        self, pieces: Sequence[tuple[Op, str | None]], *, cap: bool
    ) -> list[tuple[Op, int]]:
        text, units, size, anchor = self._content, self._units, self._bytes, self._anchor
        staged: list[_Entry] = []
        for version, (op, expected) in enumerate(pieces, start=self._version + 1):
            bmp = units == len(text)  # no astral characters: offsets are indices
            i = _locate(text, op.position, anchor, bmp)
            anchor = (i, op.position)  # the text before an edit stays as it is
            before = units
            if isinstance(op, Insert):
                if has_lone_surrogate(op.content):
                    raise LoneSurrogate("inserted content holds a lone surrogate")
                added = utf8_len(op.content)
                if cap and added and size + added > self.max_bytes:
                    raise TooLarge(size + added, self.max_bytes)
                removed = ""
                text = text[:i] + op.content + text[i:]
                units, size = units + op.length, size + added
            else:
                j = _index(text, op.length, i, bmp)
                removed = text[i:j]
                if expected is not None and removed != expected:
                    raise DeleteMismatch("delete content differs from the text it removes")
                text = text[:i] + text[j:]
                units, size = units - op.length, size - utf8_len(removed)
            staged.append(_Entry(op, version, removed, before))
        if staged:
            self._content, self._units, self._bytes, self._anchor = text, units, size, anchor
            self._version = staged[-1].version
            self._history.extend(staged)
        return [(e.op, e.version) for e in staged]


def _index(text: str, offset: int, start: int, bmp: bool) -> int:
    if bmp:
        if offset < 0 or start + offset > len(text):
            raise OutOfRange(f"offset {offset} is outside the document")
        return start + offset
    return utf16_to_index(text, offset, start)


def _locate(text: str, offset: int, anchor: tuple[int, int], bmp: bool) -> int:
    """Index of UTF-16 ``offset``, counted from the start or from ``anchor`` (a known index and
    its offset, the last edit's position) whichever is nearer: edits cluster where people type,
    so in a large document with astral characters this is usually much less than O(n)."""
    if bmp:
        return _index(text, offset, 0, bmp)
    at, at_offset = anchor
    if offset >= at_offset:
        return utf16_to_index(text, offset - at_offset, at)
    if offset <= at_offset - offset:
        return utf16_to_index(text, offset)
    return utf16_back_to_index(text, at_offset - offset, at)


def _transform_checked(
    op: Delete, content: str | None, history: Sequence[_Entry]
) -> list[tuple[Op, str | None]]:
    """``transform_against`` for a delete, carrying along the part of ``content`` each part must
    remove and checking the part a concurrent delete removed against what that delete removed."""
    if content is None:
        return [(part, None) for part in transform_against(op, [e.op for e in history])]
    pieces: list[_Piece] = [(op, content)]
    for entry in history:
        if not pieces:
            break
        pieces = [q for part, text in pieces for q in _carry(part, text, entry)]
    # Parts are in descending order: merge a part into the one on its right when they touch.
    merged: list[tuple[Op, str | None]] = []
    for part, text in pieces:
        if merged and part.end == merged[-1][0].position:
            right, right_text = merged[-1]
            merged[-1] = (
                Delete(part.position, part.length + right.length),
                text + (right_text or ""),
            )
        else:
            merged.append((part, text))
    return merged


def _carry(part: Delete, text: str, entry: _Entry) -> list[_Piece]:
    applied = entry.op
    moved = transform(part, applied)
    if isinstance(applied, Delete):
        lo, hi = max(part.position, applied.position), min(part.end, applied.end)
        if lo < hi:
            a, b = lo - part.position, hi - part.position
            mine = _cut(text, a, b)
            if mine != utf16_slice(entry.removed, lo - applied.position, hi - applied.position):
                raise DeleteMismatch("delete content differs from the text it removes")
            text = _cut(text, 0, a) + _cut(text, b, part.length)
        return [(m, text) for m in moved]
    if len(moved) == 2:  # split around the insert: right part first
        at = applied.position - part.position
        return [(moved[0], _cut(text, at, part.length)), (moved[1], _cut(text, 0, at))]
    return [(m, text) for m in moved]


def _cut(content: str, start: int, end: int) -> str:
    # `content` came from the client; a cut that splits one of its astral characters falls where
    # the document has a character boundary, so the content cannot match the document there.
    try:
        return utf16_slice(content, start, end)
    except (SplitsSurrogate, OutOfRange) as exc:
        raise DeleteMismatch("delete content differs from the text it removes") from exc
