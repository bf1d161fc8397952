"""Snapshots of the log's presence picture, so a service starts from the last one instead of
reading every presence event ever logged (one per connection opened or closed: they never stop
growing).

A snapshot is every ``LoggedPresence`` picture of a service as of log sequence ``upTo``: the
presence events up to it, folded. It is a cache of the log, never the truth: a missing or
unreadable one means reading the presence events from the start, as before. Pictures are exact
at ``upTo``; re-applying events at or before it changes nothing (a user's state is their last
event), so starting from any older snapshot is correct too.

Sans-I/O: ``encode``/``decode``; the follower saves (``shared/follow.py``), services load.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import msgspec

from shared.presence import LoggedPresence

__all__ = ["Row", "decode_snapshot", "encode_snapshot"]

Row = tuple[Hashable, str, str, Any]  # room, user id, user name, payload


class _Row(msgspec.Struct, array_like=True):
    room: str | list[str]  # a tuple key (a collaboration session) travels as a list
    user: str
    name: str
    payload: str | None = None


class _Snapshot(msgspec.Struct):
    upTo: int
    pictures: dict[str, list[_Row]]
    v: int = 1


_decoder = msgspec.json.Decoder(_Snapshot)


def encode_snapshot(up_to: int, pictures: Mapping[str, LoggedPresence[Any, Any]]) -> bytes:
    rows = {
        name: [
            _Row(list(room) if isinstance(room, tuple) else room, user, user_name, payload)
            for room, user, user_name, payload in picture.entries()
        ]
        for name, picture in pictures.items()
    }
    # Ids and names repeat a lot: compressed, a large deployment's picture stays well under
    # the payload limit.
    return zlib.compress(msgspec.json.encode(_Snapshot(up_to, rows)), 6)


def decode_snapshot(data: bytes) -> tuple[int, dict[str, list[Row]]]:
    """``(upTo, {picture: [(room, user, name, payload)]})``; ValueError if it is not one."""
    try:
        snap = _decoder.decode(zlib.decompress(data))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise ValueError(f"not a presence snapshot: {exc}") from None
    pictures: dict[str, list[Row]] = {}
    for name, rows in snap.pictures.items():
        pictures[name] = [
            (tuple(r.room) if isinstance(r.room, list) else r.room, r.user, r.name, r.payload)
            for r in rows
        ]
    return snap.upTo, pictures
