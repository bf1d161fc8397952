from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_guide_client import Backoff


def test_ceiling_doubles_from_base_until_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    assert [backoff.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_delay_is_full_jitter_scaled_by_the_random_source() -> None:
    assert Backoff(base=1.0, cap=100.0, random=lambda: 0.0).delay(3) == 0.0
    assert Backoff(base=1.0, cap=100.0, random=lambda: 0.5).delay(3) == 4.0
    assert Backoff(base=1.0, cap=100.0, random=lambda: 0.999).delay(3) == pytest.approx(7.992)


@given(
    base=st.floats(0.0, 10.0),
    cap=st.floats(0.0, 120.0),
    attempt=st.integers(0, 10_000),
    r=st.floats(0.0, 1.0, exclude_max=True),
)
def test_delay_always_lies_between_zero_and_the_capped_ceiling(
    base: float, cap: float, attempt: int, r: float
) -> None:
    backoff = Backoff(base=base, cap=cap, random=lambda: r)
    delay = backoff.delay(attempt)
    assert 0.0 <= delay <= min(cap, backoff.ceiling(attempt))


def test_huge_attempt_numbers_are_capped_without_overflow() -> None:
    assert Backoff(base=1.0, cap=30.0).ceiling(10**6) == 30.0


def test_jitter_spreads_delays_over_the_whole_window() -> None:
    backoff = Backoff(base=1.0, cap=8.0)  # real random source
    delays = [backoff.delay(3) for _ in range(2000)]
    assert min(delays) < 0.8 and max(delays) > 7.2


def test_max_attempts_bounds_the_number_of_retries() -> None:
    assert len(list(Backoff(max_attempts=4, random=lambda: 0.5).delays())) == 4
    assert list(Backoff(max_attempts=0).delays()) == []
    assert Backoff(max_attempts=2).exhausted(2)
    assert not Backoff(max_attempts=2).exhausted(1)


def test_without_max_attempts_retries_never_run_out() -> None:
    backoff = Backoff(max_attempts=None)
    assert not backoff.exhausted(10**9)
    assert len(list(itertools.islice(backoff.delays(), 100))) == 100


def test_invalid_settings_fail_loudly() -> None:
    with pytest.raises(ValueError):
        Backoff(base=-1)
    with pytest.raises(ValueError):
        Backoff(max_attempts=-1)
    with pytest.raises(ValueError):
        Backoff().ceiling(-1)
