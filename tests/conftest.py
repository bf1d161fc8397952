"""Shared test helpers: one timeout factor for slow machines."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

FACTOR = float(os.environ.get("AG_TEST_TIMEOUT_FACTOR", "1"))


def T(seconds: float) -> float:
    """A timeout scaled by AG_TEST_TIMEOUT_FACTOR (2 cores; CI may be slower)."""
    return seconds * FACTOR


@pytest.fixture(autouse=True)
async def _close_test_clients() -> AsyncIterator[None]:
    """Every WebSocket a test opened with ``tests.helpers.Client`` is closed when it ends."""
    yield
    from tests.helpers import Client

    await Client.close_all()
