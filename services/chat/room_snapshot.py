"""Room snapshots: a room's picture kept in the snapshot bucket, so loading a room that left
memory (or a restart) is two reads instead of a search through the stream.

Reading a room from the tail of its subject makes nats-server walk the stream between the room's
messages (they are spread among every other room's), and a room loaded after busy minutes reads
back through the whole dedup window. A snapshot holds what a load would build: the newest
messages with their stream sequences, the subject's last sequence and the dedup entries.

It is a cache of the log, never the truth: it is used only when the log agrees with it (its
newest message is still in the log at that sequence, with that id), then brought up to date
from the log; otherwise the room is read from its tail as before.

Sans-I/O: ``encode_room``/``decode_room``; the chat service saves and loads.
"""

from __future__ import annotations

import zlib

import msgspec

from services.chat.room import Room
from shared import subjects
from shared.schemas.events import ChatMessagePosted

__all__ = ["decode_room", "encode_room", "snapshot_key"]


class _RoomSnapshot(msgspec.Struct, frozen=True):
    contextId: str
    lastSubjectSeq: int
    messages: list[ChatMessagePosted]
    logSeqs: list[int]
    dedup: list[tuple[str, str, str, int, int]]  # user or "", client or request id, message…
    v: int = 1


_decoder = msgspec.msgpack.Decoder(_RoomSnapshot)


def snapshot_key(context_id: str) -> str:
    """The room's key in the snapshot bucket (keys allow ``=`` but not the token's ``~``)."""
    return "chat.room." + subjects.token(context_id).replace("~", "=", 1)


def encode_room(room: Room, limit: int) -> bytes | None:
    """The room's snapshot in at most ``limit`` bytes (fewer messages when they do not fit:
    a snapshot of the newest few is still a room's picture); None for a room with no messages,
    or whose dedup entries alone do not fit (they are never cut: a snapshot without some would
    store a re-sent frame twice)."""
    pairs, dedup = room.snapshot()
    first = True
    while pairs:
        data = _encode(room, pairs, dedup)
        if len(data) <= limit:
            return data
        if first and len(_encode(room, [], dedup)) > limit:
            return None
        first = False
        pairs = pairs[len(pairs) // 2 :] if len(pairs) > 1 else []
    return None


def _encode(
    room: Room,
    pairs: list[tuple[ChatMessagePosted, int]],
    dedup: list[tuple[str, str, str, int, int]],
) -> bytes:
    snap = _RoomSnapshot(
        room.context_id,
        room.last_subject_seq,
        [ev for ev, _ in pairs],
        [seq for _, seq in pairs],
        dedup,
    )
    return zlib.compress(msgspec.msgpack.encode(snap), 1)


def decode_room(data: bytes, context_id: str, keep: int | None) -> Room:
    """The room a snapshot pictures; ValueError if it is not one of ``context_id``."""
    try:
        snap = _decoder.decode(zlib.decompress(data))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise ValueError(f"not a room snapshot: {exc}") from None
    if snap.contextId != context_id or len(snap.messages) != len(snap.logSeqs):
        raise ValueError("a snapshot of another room, or damaged")
    return Room.restored(
        context_id,
        keep,
        list(zip(snap.messages, snap.logSeqs, strict=True)),
        snap.lastSubjectSeq,
        snap.dedup,
    )
