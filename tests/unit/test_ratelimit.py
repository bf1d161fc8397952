from __future__ import annotations

from shared.ratelimit import KeyedLimiter, SlidingWindow


def test_the_limit_plus_first_event_in_any_window_is_refused() -> None:
    w = SlidingWindow(3, 60)
    assert [w.hit(t) for t in (0, 1, 2, 3)] == [True, True, True, False]


def test_budget_returns_as_events_age_out_of_the_sliding_window() -> None:
    w = SlidingWindow(2, 60)
    assert w.hit(0) and w.hit(30) and not w.hit(59.9)
    assert w.hit(60.0)  # the event at 0 is exactly 60 s old: outside the window
    assert not w.hit(61)
    assert w.hit(90.01)


def test_refused_events_do_not_count() -> None:
    w = SlidingWindow(1, 60)
    assert w.hit(0)
    assert not any(w.hit(t) for t in range(1, 59))
    assert w.hit(60)


def test_keyed_limiter_keeps_separate_budgets_and_sweeps_idle_keys() -> None:
    k = KeyedLimiter(1, 60)
    assert k.hit("a", 0) and k.hit("b", 0) and not k.hit("a", 1)
    assert len(k) == 2
    k.sweep(200)
    assert len(k) == 0
