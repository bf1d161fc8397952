"""Shared test helpers: one timeout factor for slow machines."""

from __future__ import annotations

import os

FACTOR = float(os.environ.get("AG_TEST_TIMEOUT_FACTOR", "1"))


def T(seconds: float) -> float:
    """A timeout scaled by AG_TEST_TIMEOUT_FACTOR (2 cores; CI may be slower)."""
    return seconds * FACTOR
