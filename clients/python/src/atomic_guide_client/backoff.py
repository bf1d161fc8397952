"""Exponential backoff with full jitter, sans-I/O.

``delay(n) = uniform(0, min(cap, base * 2**n))`` for the n-th consecutive failure
(counting from 0): the "full jitter" variant from the AWS architecture blog ("Exponential
Backoff And Jitter", 2015), which spreads a crowd of clients that lost the same gateway
over the whole window instead of letting them reconnect in lock-step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Backoff"]

# 2**63 * base overflows nothing in float arithmetic, but there is no reason to compute
# it: past this exponent every sane (base, cap) pair is already capped.
_MAX_EXPONENT = 62


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delay policy.

    Args:
        base: upper bound of the first delay, in seconds.
        cap: upper bound of every delay, in seconds.
        max_attempts: how many retries in a row the client makes before it gives up
            (``None``: never give up; ``0``: never retry).
        random: source of uniform floats in ``[0, 1)``; inject one for reproducible tests.
    """

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int | None = None
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("base and cap must be >= 0")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0 or None")

    def ceiling(self, attempt: int) -> float:
        """The largest delay the ``attempt``-th retry (0-based) may get."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        if attempt >= _MAX_EXPONENT:
            return self.cap
        return min(self.cap, self.base * float(2**attempt))

    def delay(self, attempt: int) -> float:
        """A jittered delay for the ``attempt``-th retry (0-based), in ``[0, ceiling]``."""
        ceiling = self.ceiling(attempt)
        return min(ceiling, max(0.0, self.random() * ceiling))

    def exhausted(self, retries: int) -> bool:
        """True once ``retries`` consecutive retries used up ``max_attempts``."""
        return self.max_attempts is not None and retries >= self.max_attempts

    def delays(self) -> Iterator[float]:
        """The delays of successive retries, ending when ``max_attempts`` is used up."""
        attempt = 0
        while not self.exhausted(attempt):
            yield self.delay(attempt)
            attempt += 1
