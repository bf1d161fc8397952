from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fake_server import FakeServer, running

from atomic_guide_client import Backoff


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with running(FakeServer()) as fake:
        yield fake


@pytest.fixture
def fast_backoff() -> Backoff:
    """Reconnect delays of at most 20 ms, so reconnect tests are quick."""
    return Backoff(base=0.005, cap=0.02)
