"""``Bus.append_chain`` over ``Bus.append``, for both buses: one append after another, each
expecting the sequence the one before it got."""

from __future__ import annotations

import time
from collections.abc import Sequence

from shared.bus.port import Bus, Conflict

__all__ = ["chain"]

MIN_APPEND_S = 0.05  # the least time one append gets, however little of the budget is left


async def chain(
    bus: Bus,
    subject: str,
    items: Sequence[tuple[str, bytes]],
    expect_last: int | None,
    timeout: float,
) -> list[int]:
    if not items:
        raise ValueError("empty chain")
    deadline = time.monotonic() + timeout
    seqs: list[int] = []
    last = expect_last
    for msg_id, data in items:
        left = max(deadline - time.monotonic(), MIN_APPEND_S)
        done = await bus.append(subject, data, msg_id=msg_id, expect_last=last, timeout=left)
        if done.duplicate:  # stored before: our picture of the subject is stale
            raise Conflict(f"message id {msg_id} is already stored")
        seqs.append(done.seq)
        last = done.seq
    return seqs
