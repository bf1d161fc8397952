"""The coalescing flusher on a real nats-server: publishes from tasks a few loop turns apart go
out in fewer socket writes than with nats-py's own flusher, and every message still arrives, in
order."""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from shared.bus.nats_flush import connect
from tests.conftest import T

N = 40


async def _writes(nc: Any, nc_sub: Any, subject: str) -> int:
    """Socket writes to publish N messages from N tasks, task i publishing i loop turns in."""
    got: list[bytes] = []
    done, probed = asyncio.Event(), asyncio.Event()

    async def on(msg: Any) -> None:
        if msg.data == b"probe":
            probed.set()
            return
        got.append(msg.data)
        if len(got) == N:
            done.set()

    await nc_sub.subscribe(subject, cb=on)
    # The subscription is known to the server once a message through it arrives (a flush's
    # PING may overtake the SUB in nats-py).
    while not probed.is_set():
        await nc.publish(subject, b"probe")
        try:
            await asyncio.wait_for(probed.wait(), 0.2)  # then probe again
        except TimeoutError:
            pass
    transport = nc._transport
    real = transport.writelines
    writes = 0

    def counting(data: Any) -> None:
        nonlocal writes
        writes += 1
        real(data)

    transport.writelines = counting
    try:

        async def publish(i: int) -> None:
            for _ in range(i):
                await asyncio.sleep(0)  # i loop turns in
            await nc.publish(subject, str(i).encode())

        await asyncio.gather(*(publish(i) for i in range(N)))
        await nc.flush()
        await asyncio.wait_for(done.wait(), T(10))
    finally:
        transport.writelines = real
    assert got == [str(i).encode() for i in range(N)]  # all of them, in order
    return writes


async def test_publishes_a_few_turns_apart_share_writes(nats_url: str) -> None:
    sub = await nats.connect(nats_url)
    plain = await nats.connect(nats_url)
    coalescing = await connect(servers=[nats_url])
    try:
        plain_writes = await _writes(plain, sub, "flush.plain")
        fewer = await _writes(coalescing, sub, "flush.coalescing")
    finally:
        for nc in (plain, coalescing, sub):
            await nc.close()
    # nats-py writes once per turn that published; lingering FLUSH_TURNS turns, one write
    # takes what several turns published (41 against 14 writes when this was written).
    assert plain_writes >= N  # one per message (and the flush's PING)
    assert fewer <= plain_writes // 2
