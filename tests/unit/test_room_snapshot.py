"""Room snapshots: what a snapshot gives back is the room it was taken of, or it is refused."""

from __future__ import annotations

import zlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.chat.room import NotKept, Room
from services.chat.room_snapshot import decode_room, encode_room, snapshot_key
from shared.schemas.events import ChatMessagePosted


def ev(seq: int, ts: int, client: str | None, ctx: str = "c") -> ChatMessagePosted:
    return ChatMessagePosted(
        contextId=ctx,
        ts=ts,
        messageId=f"m{seq}",
        seq=seq,
        userId=f"u{seq % 3}",
        userName="U",
        content=f"text {seq} " * (seq % 5),
        clientId=client,
        requestId=None if client else f"r{seq}",
    )


def picture(room: Room) -> tuple[object, ...]:
    pairs, dedup = room.snapshot()
    return room.seq, room.base, room.last_subject_seq, pairs, sorted(dedup)


@given(
    n=st.integers(1, 60),
    keep=st.sampled_from([None, 1, 4, 10]),
    gaps=st.lists(st.integers(1, 5), min_size=60, max_size=60),
    clients=st.lists(st.booleans(), min_size=60, max_size=60),
    junk=st.integers(0, 3),
)
def test_a_snapshot_gives_back_the_room(
    n: int, keep: int | None, gaps: list[int], clients: list[bool], junk: int
) -> None:
    room, stream = Room("c", keep), 0
    for i in range(1, n + 1):
        stream += gaps[i - 1]
        assert room.apply(ev(i, 1000 * i, f"k{i}" if clients[i - 1] else None), stream)
    room.skip(stream + junk)  # undecodable entries after the last message count too
    back = decode_room(encode_room(room, 1 << 20) or b"", "c", keep)
    assert picture(back) == picture(room)
    for i in range(1, n + 1):  # every dedup entry still found, kept message or not
        key = (f"u{i % 3}", f"k{i}") if clients[i - 1] else None
        got = back.duplicate_of(*key) if key else back.duplicate_of("", None, f"r{i}")
        assert got == room.duplicate_of(*key) if key else room.duplicate_of("", None, f"r{i}")
    for limit in (1, 5, 100):
        assert history(back, limit) == history(room, limit)


def history(room: Room, limit: int) -> object:
    try:
        return room.history(limit)
    except NotKept:
        return "not kept"


def test_a_snapshot_too_big_for_the_limit_keeps_the_newest_messages() -> None:
    room = Room("c")
    for i in range(1, 201):
        room.apply(ev(i, i, f"k{i}"), 2 * i)
    data = encode_room(room, 2_000)
    assert data is not None and len(data) <= 2_000
    back = decode_room(data, "c", None)
    assert back.seq == 200 and back.last_subject_seq == 400
    assert 0 < len(back.messages) < 200 and back.messages[-1] == room.messages[-1]
    assert back.duplicate_of("u1", "k1") == room.duplicate_of("u1", "k1")  # dedup kept whole
    assert encode_room(Room("empty"), 1 << 20) is None  # nothing to picture
    # Dedup entries are never cut: when they alone are over the limit, there is no snapshot.
    busy = Room("c", keep=2)
    for i in range(1, 3001):
        busy.apply(ev(i, i, f"client-{i:06d}-{'x' * (i % 7)}"), i)
    assert len(busy.messages) < 5 and encode_room(busy, 4_000) is None
    assert encode_room(busy, 1 << 20) is not None


def _raw(**fields: object) -> bytes:
    base: dict[str, object] = {
        "contextId": "c",
        "lastSubjectSeq": 30,
        "messages": [msgspec.to_builtins(ev(s, s, None)) for s in (1, 2, 3)],
        "logSeqs": [10, 20, 30],
        "dedup": [],
    }
    return zlib.compress(msgspec.msgpack.encode({**base, **fields}))


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        zlib.compress(b"\x81\xa1x\x01"),
        _raw(contextId="other"),
        _raw(logSeqs=[10, 20]),
        _raw(logSeqs=[10, 30, 20]),
        _raw(messages=[msgspec.to_builtins(ev(s, s, None)) for s in (1, 3, 4)]),
        _raw(messages=[msgspec.to_builtins(ev(s, s, None, "other")) for s in (1, 2, 3)]),
        _raw(lastSubjectSeq=25),
        _raw(messages=[], logSeqs=[]),
    ],
)
def test_a_damaged_or_foreign_snapshot_is_refused(data: bytes) -> None:
    assert decode_room(_raw(), "c", None).seq == 3  # the undamaged one is fine
    with pytest.raises(ValueError):
        decode_room(data, "c", None)


def test_keys_are_valid_bucket_keys_and_distinct() -> None:
    ids = ["course-1", "a b", "a.b", "ü", "~x", "=x", "x" * 200]
    keys = [snapshot_key(i) for i in ids]
    assert len(set(keys)) == len(keys)
    allowed = set("-/_=.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    assert all(set(k) <= allowed for k in keys)
