"""Errors of the OT core, rooted at ``OTError``.

Every one of them is the client's doing, so each is a ``shared.errors`` refusal and the one error
map names it: ``VersionMismatch`` is ``version_mismatch`` (``data.version``: the current version),
``TooLarge`` is ``too_large`` (``data.limit``), all the others ``invalid_message``; nothing here
means ``internal``.
"""

from __future__ import annotations

from shared import errors

__all__ = [
    "OTError",
    "OutOfRange",
    "SplitsSurrogate",
    "LoneSurrogate",
    "DeleteMismatch",
    "TooLarge",
    "VersionMismatch",
]


class OTError(errors.InvalidMessage):
    """An operation that cannot be applied as sent."""


class OutOfRange(OTError):
    """A position or range outside the document (or a negative position or length)."""


class SplitsSurrogate(OTError):
    """A position that falls between the two UTF-16 units of one astral character."""


class LoneSurrogate(OTError):
    """Text holding a surrogate code point (U+D800..U+DFFF) that is not part of a pair."""


class DeleteMismatch(OTError):
    """A delete whose ``content`` is not the text it removes."""


class TooLarge(errors.TooLarge, OTError):
    """The edit would take the document over its UTF-8 size cap."""

    def __init__(self, size: int, limit: int) -> None:
        message = f"document would be {size} bytes, over the {limit}-byte cap"
        super().__init__(message, {"limit": limit})
        self.size = size
        self.limit = limit


class VersionMismatch(errors.VersionMismatch, OTError):
    """A base version newer than the document's, or older than its oldest kept operation."""

    def __init__(self, current_version: int, requested: int | None = None) -> None:
        message = f"version {requested} not available; current version {current_version}"
        super().__init__(message, {"version": current_version})
        self.current_version = current_version
        self.requested = requested
