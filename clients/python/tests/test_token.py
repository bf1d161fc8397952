from __future__ import annotations

import pytest
from fake_server import make_jwt

from atomic_guide_client._token import (
    TokenClock,
    parse_server_time,
    read_token_times,
    refresh_delay,
)


def test_exp_and_iat_are_read_from_the_payload_without_verification() -> None:
    times = read_token_times(make_jwt(sub="u", iat=1_000, exp=4_600))
    assert times.expires_at == 4_600.0 and times.issued_at == 1_000.0


@pytest.mark.parametrize(
    "token",
    ["opaque-test-token", "a.b", "a.!!!.c", make_jwt(sub="u"), make_jwt(exp="soon"), "a.W10.c"],
)
def test_tokens_without_a_readable_exp_schedule_no_refresh(token: str) -> None:
    assert read_token_times(token).expires_at is None


def test_boolean_exp_is_not_a_number() -> None:
    assert read_token_times(make_jwt(exp=True)).expires_at is None


def test_refresh_is_due_at_80_percent_of_the_lifetime_by_default() -> None:
    assert refresh_delay(expires_at=1_100, obtained_at=100, now=100) == pytest.approx(800)
    assert refresh_delay(expires_at=1_100, obtained_at=100, now=500) == pytest.approx(400)


def test_refresh_margin_puts_the_refresh_that_many_seconds_before_exp() -> None:
    delay = refresh_delay(expires_at=1_100, obtained_at=100, now=100, refresh_margin=60)
    assert delay == pytest.approx(940)


def test_a_token_already_in_its_refresh_window_is_refreshed_at_once() -> None:
    assert refresh_delay(expires_at=1_100, obtained_at=100, now=1_050) == 0.0
    assert refresh_delay(expires_at=1_100, obtained_at=100, now=2_000) == 0.0


def test_server_timestamps_parse_to_posix_seconds() -> None:
    assert parse_server_time("1970-01-01T00:00:01.500Z") == 1.5
    assert parse_server_time("") is None
    assert parse_server_time("yesterday") is None
    assert parse_server_time("2026-01-05T09:30:00") is None  # no zone: not trusted


def test_token_clock_judges_expiry_by_the_server_clock() -> None:
    clock = TokenClock()
    # The server is 100 s ahead of us.
    clock.sync("1970-01-01T00:18:20.000Z", now=1_000.0)  # server 1100
    clock.accept(make_jwt(exp=1_200.0), now=1_000.0)  # no iat: obtained at server 1100
    assert clock.refresh_in(now=1_000.0) == pytest.approx(80.0)  # 80 % of 100 s


def test_token_clock_prefers_iat_over_the_time_it_got_the_token() -> None:
    clock = TokenClock(refresh_margin=None)
    clock.accept(make_jwt(iat=0.0, exp=1_000.0), now=500.0)
    assert clock.refresh_in(now=500.0) == pytest.approx(300.0)


def test_token_clock_only_refreshes_tokens_that_carry_exp() -> None:
    clock = TokenClock()
    clock.accept("opaque", now=0.0)
    assert clock.refresh_in(now=0.0) is None


def test_a_provider_handing_back_the_same_or_an_older_token_is_not_fresher() -> None:
    clock = TokenClock()
    current = make_jwt(exp=1_000.0, n=1)
    clock.accept(current, now=0.0)
    assert not clock.is_fresher(current)
    assert not clock.is_fresher(make_jwt(exp=900.0))
    assert clock.is_fresher(make_jwt(exp=1_001.0))


def test_retry_after_a_failed_refresh_is_a_quarter_of_the_time_left_within_bounds() -> None:
    clock = TokenClock()
    clock.accept(make_jwt(exp=1_000.0), now=0.0)
    assert clock.retry_in(now=960.0) == 10.0
    assert clock.retry_in(now=0.0) == 30.0
    assert clock.retry_in(now=999.0) == 1.0
