from __future__ import annotations

import pytest

from services.chat.room import NotKept, Room, message_wire
from shared.schemas.events import ChatMessagePosted


def ev(seq: int, ts: int, client: str | None = None, user: str = "u") -> ChatMessagePosted:
    return ChatMessagePosted(
        contextId="c",
        ts=ts,
        messageId=f"m{seq}",
        seq=seq,
        userId=user,
        userName="U",
        content=f"text {seq}",
        clientId=client,
    )


def filled(n: int) -> Room:
    r = Room("c")
    for i in range(1, n + 1):
        assert r.apply(ev(i, 1000 * i, client=f"k{i}"), stream_seq=10 * i)
    return r


def test_apply_is_idempotent_for_redelivered_or_replayed_events() -> None:
    r = filled(3)
    assert not r.apply(ev(3, 3000), stream_seq=30)
    assert not r.apply(ev(2, 2000), stream_seq=35)
    assert r.seq == 3 and r.last_subject_seq == 30


def test_history_returns_newest_before_cursors_oldest_first_with_has_more() -> None:
    r = filled(10)
    msgs, more = r.history(3)
    assert [m.seq for m in msgs] == [8, 9, 10] and more
    msgs, more = r.history(3, before_seq=4)
    assert [m.seq for m in msgs] == [1, 2, 3] and not more
    msgs, more = r.history(50, before_ms=5000)  # strictly before message 5's time
    assert [m.seq for m in msgs] == [1, 2, 3, 4] and not more
    msgs, _ = r.history(50, before_ms=5000, before_seq=3)
    assert [m.seq for m in msgs] == [1, 2]
    assert r.history(5, before_seq=1) == ([], False)


def test_recovery_is_all_or_nothing_past_the_cap() -> None:
    r = filled(6)
    msgs, truncated = r.after(3, cap=5)
    assert [m.seq for m in msgs] == [4, 5, 6] and not truncated
    assert r.after(0, cap=5) == ([], True)
    assert r.after(6, cap=5) == ([], False)
    assert r.after(99, cap=5) == ([], False)


def test_dedup_index_finds_a_users_frame_id_and_forgets_after_the_window() -> None:
    r = filled(3)
    assert r.duplicate_of("u", "k2") == ("m2", 2)
    assert r.duplicate_of("other", "k2") is None
    assert r.duplicate_of("u", None) is None
    r.forget_before(2500)
    assert r.duplicate_of("u", "k2") is None and r.duplicate_of("u", "k3") == ("m3", 3)


def test_message_wire_shape() -> None:
    assert message_wire(ev(1, 1_767_605_400_123)) == {
        "id": "m1",
        "seq": 1,
        "content": "text 1",
        "messageType": "text",
        "author": {"id": "u", "name": "U"},
        "timestamp": "2026-01-05T09:30:00.123Z",
    }


def test_a_room_keeps_its_newest_messages_and_says_when_a_range_is_past_them() -> None:
    room = Room("c", keep=3)
    for i in range(1, 11):
        assert room.apply(ev(i, 1000 * i), 10 * i)
    assert room.seq == 10 and 3 <= len(room.messages) < 6
    assert room.message(10) is not None and room.message(1) is None
    assert room.log_seq(10) == 100 and room.log_seq(1) is None
    msgs, more = room.history(2)
    assert [m.seq for m in msgs] == [9, 10] and more
    for cursors in [{"limit": 50}, {"limit": 2, "before_seq": 3}, {"limit": 2, "before_ms": 1000}]:
        with pytest.raises(NotKept):
            room.history(**cursors)
    msgs, truncated = room.after(8, cap=5)
    assert [m.seq for m in msgs] == [9, 10] and not truncated
    assert room.after(1, cap=5) == ([], True)
    with pytest.raises(NotKept):
        room.after(2, cap=100)
