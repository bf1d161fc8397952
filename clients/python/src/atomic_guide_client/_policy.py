"""What to do after a socket ends, sans-I/O: docs/protocol.md's close-code table as code.

| close code                     | action                                       |
| ------------------------------ | -------------------------------------------- |
| 1000, 1009, 4401, 4403         | end the client (``error_for_close``)         |
| 1001 (draining)                | reconnect at once, to another gateway        |
| 1008, 4408, 1006, others       | reconnect after a full-jitter backoff delay  |

A 1001 on a socket that lived less than ``DRAIN_MIN_LIFETIME`` seconds is treated like
any other failure, so a gateway that drains everyone who lands on it cannot make the
client spin.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backoff import Backoff
from .errors import ConnectionClosed, ReconnectFailed, error_for_close, is_terminal_close

__all__ = ["DRAIN_MIN_LIFETIME", "Retry", "after_close"]

DRAIN_MIN_LIFETIME = 1.0


@dataclass(frozen=True, slots=True)
class Retry:
    """Reconnect after ``delay`` seconds; ``retries`` is the new consecutive-retry count."""

    delay: float
    retries: int


def after_close(
    code: int, reason: str, *, lived: float, retries: int, backoff: Backoff
) -> Retry | ConnectionClosed:
    """Decide after a socket closed with ``code`` (1006 for a failed connect).

    ``lived``: seconds the socket was authenticated (0 if it never was); ``retries``:
    consecutive retries so far (reset by every successful connect).
    """
    if is_terminal_close(code):
        return error_for_close(code, reason)
    if code == 1001 and lived >= DRAIN_MIN_LIFETIME:
        return Retry(0.0, retries)
    if backoff.exhausted(retries):
        return ReconnectFailed(code, f"gave up after {retries} retries: {reason}")
    return Retry(backoff.delay(retries), retries + 1)
