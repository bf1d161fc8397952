from __future__ import annotations

import pytest

from atomic_guide_client import (
    AuthError,
    Backoff,
    ConnectionClosed,
    ForbiddenError,
    FrameTooLargeError,
    ReconnectFailed,
)
from atomic_guide_client._policy import Retry, after_close

BACKOFF = Backoff(base=1.0, cap=8.0, max_attempts=3, random=lambda: 0.5)


@pytest.mark.parametrize(
    ("code", "error"),
    [(4401, AuthError), (4403, ForbiddenError), (1009, FrameTooLargeError)],
)
def test_auth_forbidden_and_too_large_closes_are_never_retried(
    code: int, error: type[ConnectionClosed]
) -> None:
    step = after_close(code, "bye", lived=100.0, retries=0, backoff=BACKOFF)
    assert isinstance(step, error)
    assert step.code == code and step.reason == "bye"


def test_a_normal_close_ends_the_client_cleanly() -> None:
    step = after_close(1000, "", lived=5.0, retries=0, backoff=BACKOFF)
    assert type(step) is ConnectionClosed and step.code == 1000


def test_draining_gateway_1001_is_followed_by_an_immediate_reconnect() -> None:
    assert after_close(1001, "", lived=30.0, retries=0, backoff=BACKOFF) == Retry(0.0, 0)


def test_a_1001_right_after_connecting_backs_off_instead_of_spinning() -> None:
    assert after_close(1001, "", lived=0.1, retries=0, backoff=BACKOFF) == Retry(0.5, 1)


@pytest.mark.parametrize("code", [1008, 4408, 1006, 1011, 1012])
def test_rate_limit_auth_timeout_and_abnormal_closes_back_off_exponentially(code: int) -> None:
    delays = []
    retries = 0
    for _ in range(3):
        step = after_close(code, "", lived=0.0, retries=retries, backoff=BACKOFF)
        assert isinstance(step, Retry)
        delays.append(step.delay)
        retries = step.retries
    assert delays == [0.5, 1.0, 2.0]


def test_retries_run_out_after_max_attempts() -> None:
    step = after_close(1006, "refused", lived=0.0, retries=3, backoff=BACKOFF)
    assert isinstance(step, ReconnectFailed)
    assert "3 retries" in str(step)
