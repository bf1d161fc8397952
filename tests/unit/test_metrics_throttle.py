"""At most one update per second per (context, metric), the freshest value, and only changes."""

from __future__ import annotations

from services.analytics.throttle import Throttle


def test_a_marked_pair_is_due_at_once_the_first_time() -> None:
    t = Throttle(1000)
    t.mark("c", ["activity"], 10_000)
    assert t.due(10_000) == [("c", "activity")]
    assert t.due(10_000) == []


def test_after_a_publication_the_next_is_due_one_interval_later() -> None:
    t = Throttle(1000)
    assert t.offer("c", "activity", {"n": 1}, 10_000)
    t.mark("c", ["activity"], 10_200)
    assert t.due(10_999) == []
    assert t.next_due() == 11_000
    assert t.due(11_000) == [("c", "activity")]


def test_unchanged_values_are_not_published_again() -> None:
    t = Throttle(1000)
    assert t.offer("c", "m", {"n": 1}, 0)
    assert not t.offer("c", "m", {"n": 1}, 5000)
    assert t.offer("c", "m", {"n": 2}, 6000)


def test_an_early_changed_value_is_deferred_not_lost() -> None:
    t = Throttle(1000)
    assert t.offer("c", "m", 1, 0)
    assert not t.offer("c", "m", 2, 300)
    assert t.next_due() == 1000
    assert t.due(1000) == [("c", "m")]
    assert t.offer("c", "m", 2, 1000)


def test_pairs_are_independent_and_marks_coalesce() -> None:
    t = Throttle(1000)
    t.offer("c", "activity", 1, 0)
    for now in (100, 200, 300):
        t.mark("c", ["activity", "engagement"], now)
        t.mark("d", ["activity"], now)
    assert sorted(t.due(300)) == [("c", "engagement"), ("d", "activity")]
    assert t.due(1000) == [("c", "activity")]


def test_forget_drops_a_context() -> None:
    t = Throttle(1000)
    t.offer("c", "m", 1, 0)
    t.mark("c", ["m"], 10)
    t.forget("c")
    assert t.next_due() is None
    assert t.offer("c", "m", 1, 20)


def test_an_unchanged_value_is_not_recomputed_for_every_batch() -> None:
    t = Throttle(1000, recompute_ms=250)
    t.offer("c", "m", 1, 0)
    assert not t.offer("c", "m", 1, 2000)  # computed at 2000, unchanged
    t.mark("c", ["m"], 2010)
    assert t.due(2100) == []
    assert t.due(2250) == [("c", "m")]


def test_while_catching_up_a_pair_is_recomputed_at_most_every_gap() -> None:
    t = Throttle(1000, recompute_ms=250)
    t.offer("c", "m", 1, 0)
    t.mark("c", ["m"], 1500, min_gap_ms=5000)
    assert t.next_due() == 5000
    t.mark("c", ["m"], 1600)  # caught up: the normal pace applies again
    assert t.due(1600) == [("c", "m")]


def test_a_timed_recompute_does_not_hold_back_the_next_event() -> None:
    t = Throttle(1000, recompute_ms=250)
    t.offer("c", "m", 1, 0)
    assert not t.offer("c", "m", 1, 5000, timed=True)  # the periodic tick: unchanged
    t.mark("c", ["m"], 5010)
    assert t.due(5010) == [("c", "m")]
