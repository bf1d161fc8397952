from __future__ import annotations

from services.gateway.ordering import RoomOrder


def test_an_unknown_position_takes_the_first_frame() -> None:
    order = RoomOrder()
    assert order.check(7) == "next" and order.missing(9) == 0
    order.advance(7, 70)
    assert (order.last, order.log_seq) == (7, 70)


def test_the_next_seq_passes_old_ones_drop_and_a_jump_is_a_gap() -> None:
    order = RoomOrder(3, 30)
    assert order.check(4) == "next"
    assert order.check(3) == "old" and order.check(1) == "old"
    assert order.check(6) == "gap" and order.missing(6) == 2


def test_an_empty_room_starts_at_zero() -> None:
    order = RoomOrder(0, 0)
    assert order.check(1) == "next" and order.check(2) == "gap" and order.missing(2) == 1


def test_a_frame_without_a_log_position_keeps_the_last_known_one() -> None:
    order = RoomOrder(3, 30)
    order.advance(4, None)
    assert (order.last, order.log_seq) == (4, 30)  # a lower bound: a fill reads a little more
