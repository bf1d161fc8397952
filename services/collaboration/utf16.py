"""UTF-16 code-unit arithmetic on Python strings.

JavaScript indexes strings by UTF-16 code units, Python by code points. A code point above U+FFFF
(an astral character such as 😀) is one Python character but two UTF-16 units, a surrogate pair.
The wire speaks UTF-16 offsets, so every position crosses these helpers.

Cost: ASCII text takes an O(1) path (``str.isascii`` reads a flag in CPython). Other text is
measured by encoding to UTF-16 in C; ``utf16_to_index`` only looks at the first ``offset``
characters after ``start``, never at the rest of the document.

A JSON decoder turns a valid ``\\ud83d\\ude00`` escape into one astral code point, so a surrogate
code point left in a ``str`` is unpaired: it cannot be encoded as UTF-8 and documents refuse it
(``has_lone_surrogate``). The conversions below assume text without such code points; given one,
they count it as one unit and never report it as half of a pair.
"""

from __future__ import annotations

import re

from .ot_errors import OutOfRange, SplitsSurrogate

__all__ = [
    "utf16_len",
    "has_lone_surrogate",
    "utf16_to_index",
    "utf16_back_to_index",
    "index_to_utf16",
    "splits_surrogate_pair",
    "utf16_slice",
    "utf8_len",
]

_SURROGATE = re.compile("[\ud800-\udfff]")


def utf16_len(s: str) -> int:
    """Length of ``s`` in UTF-16 code units, as JavaScript's ``s.length``."""
    if s.isascii():
        return len(s)
    return len(s.encode("utf-16-le", "surrogatepass")) >> 1


def utf8_len(s: str) -> int:
    """Length of ``s`` in UTF-8 bytes (``s`` must hold no surrogate code points)."""
    if s.isascii():
        return len(s)
    return len(s.encode("utf-8"))


def has_lone_surrogate(s: str) -> bool:
    """True if ``s`` holds any surrogate code point, i.e. an unpaired UTF-16 surrogate."""
    return not s.isascii() and _SURROGATE.search(s) is not None


def utf16_to_index(s: str, offset: int, start: int = 0) -> int:
    """The Python index reached by advancing ``offset`` UTF-16 units from index ``start``.

    Raises ``OutOfRange`` if ``offset`` is negative or runs past the end of ``s``, and
    ``SplitsSurrogate`` if it ends inside an astral character.
    """
    if offset < 0 or not 0 <= start <= len(s):
        raise OutOfRange(f"offset {offset} from index {start} is outside the text")
    end = start + offset
    if s.isascii():
        if end > len(s):
            raise OutOfRange(f"offset {offset} is past the end of the text ({len(s) - start})")
        return end
    # s[start:end] holds at least `offset` units unless the text runs out first. Any excess is
    # made of astral characters near the end; give back characters in halving steps, each of
    # which can never give back too much (r characters are between r and 2r units).
    chunk = s[start:end]
    excess = utf16_len(chunk) - offset
    if excess < 0:
        raise OutOfRange(f"offset {offset} is past the end of the text ({offset + excess})")
    i = start + len(chunk)
    while excess > 0:
        if excess == 1:
            if ord(s[i - 1]) > 0xFFFF:
                raise SplitsSurrogate(f"offset {offset} splits a surrogate pair")
            return i - 1
        r = excess >> 1
        excess -= utf16_len(s[i - r : i])
        i -= r
    return i


def utf16_back_to_index(s: str, offset: int, end: int) -> int:
    """The Python index reached by going back ``offset`` UTF-16 units from index ``end``.

    The mirror of ``utf16_to_index``, for moving from a known position to an earlier one.
    """
    if offset < 0 or not 0 <= end <= len(s):
        raise OutOfRange(f"offset {offset} back from index {end} is outside the text")
    if s.isascii():
        if offset > end:
            raise OutOfRange(f"offset {offset} is before the start of the text ({end})")
        return end - offset
    chunk = s[max(0, end - offset) : end]
    excess = utf16_len(chunk) - offset
    if excess < 0:
        raise OutOfRange(f"offset {offset} is before the start of the text ({offset + excess})")
    j = end - len(chunk)
    while excess > 0:
        if excess == 1:
            if ord(s[j]) > 0xFFFF:
                raise SplitsSurrogate(f"offset {offset} splits a surrogate pair")
            return j + 1
        r = excess >> 1
        excess -= utf16_len(s[j : j + r])
        j += r
    return j


def index_to_utf16(s: str, index: int) -> int:
    """The UTF-16 offset of Python index ``index`` (0 <= index <= len(s))."""
    if not 0 <= index <= len(s):
        raise OutOfRange(f"index {index} is outside the text")
    return utf16_len(s[:index])


def splits_surrogate_pair(s: str, offset: int) -> bool:
    """True if UTF-16 ``offset`` falls between the two halves of an astral character of ``s``.

    Raises ``OutOfRange`` for an offset outside ``s``.
    """
    try:
        utf16_to_index(s, offset)
    except SplitsSurrogate:
        return True
    return False


def utf16_slice(s: str, start: int, end: int | None = None) -> str:
    """``s`` between UTF-16 offsets ``start`` and ``end`` (the end of ``s`` if None)."""
    i = utf16_to_index(s, start)
    if end is None:
        return s[i:]
    if end < start:
        raise OutOfRange(f"slice end {end} before start {start}")
    return s[i : utf16_to_index(s, end - start, i)]
