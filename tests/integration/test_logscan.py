"""Walking a large part of the log (``shared/logscan.py``) on a real nats-server: a walk reads
what it was asked for, rides out a tail that could not open, and never takes a short read for
the whole of it."""

from __future__ import annotations

import uuid
from typing import Any

import nats.errors
import pytest

from shared import logscan, subjects
from shared.bus.port import Unavailable
from shared.schemas.events import UserJoined, encode_event
from shared.timefmt import now_ms


async def _presence(bus: Any, n: int) -> list[int]:
    seqs = []
    for i in range(n):
        ev = UserJoined(contextId=f"r{i % 3}", ts=now_ms(), userId=f"u{i}", userName="U")
        done = await bus.append(
            subjects.chat_presence(f"r{i % 3}"), encode_event(ev), msg_id=uuid.uuid4().hex
        )
        seqs.append(done.seq)
        other = await bus.append(subjects.chat_messages("r0"), b"{}", msg_id=uuid.uuid4().hex)
        assert other.seq > done.seq
    return seqs


async def test_a_walk_reads_every_wanted_entry_up_to_its_end_even_after_a_failed_open(
    nats_bus: Any,
) -> None:
    seqs = await _presence(nats_bus, 20)
    end = await nats_bus.log_end()
    real = nats_bus.js.add_consumer
    fails = [1]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if fails:
            fails.pop()
            raise nats.errors.TimeoutError  # one JetStream API hiccup while the tail opens
        return await real(*args, **kwargs)

    nats_bus.js.add_consumer = flaky
    got = [
        e.seq
        async for batch in logscan.walk(
            nats_bus, end, logscan.matcher([subjects.CHAT_PRESENCE_ALL])
        )
        for e in batch
    ]
    assert not fails and got == seqs


async def test_a_walk_that_cannot_reach_its_end_fails_instead_of_ending_short(
    nats_bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logscan, "READ_TIMEOUT_S", 0.2)
    seqs = await _presence(nats_bus, 5)
    got: list[int] = []
    with pytest.raises(Unavailable):
        async for batch in logscan.walk(
            nats_bus, seqs[-1] + 100, logscan.matcher([subjects.CHAT_PRESENCE_ALL])
        ):
            got += [e.seq for e in batch]
    assert got == seqs  # what there was, then the failure
