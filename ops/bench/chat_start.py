"""Chat service start on a large log: time to ready, memory, and history/recovery latency.

Writes ``--messages`` chat messages over ``--rooms`` rooms to a fresh nats-server (async
publishes, ``sync_interval`` relaxed so writing them does not take long; reading is unaffected),
then starts a real ``python -m services.chat`` and reports:

- ``ready_s``: from spawn until the service announces itself ready (``ag.ctl.chat.ready``),
  with ``--presence`` presence events in the log and no presence snapshot yet (it reads them
  all);
- ``rss_mb`` / ``peak_rss_mb``: its resident memory once ready (``VmRSS``, ``VmHWM``);
- ``history_ms`` / ``recovery_ms``: p50/p99 of ``--samples`` history requests (newest 50) and
  recovery requests (``afterSeq`` 100 behind) to random rooms, through the service's RPC, right
  after start (the rooms are not in memory and have no snapshot yet: these read the log, while
  the service's backfill makes the snapshots);
- ``backfill_s``: from ready until every room has a snapshot, and ``history_after_backfill_ms``
  / ``recovery_after_backfill_ms``: the same requests then (rooms still not in memory). With
  ``AG_CHAT_SNAPSHOT_BACKFILL=false`` in the environment (the service's own setting) there is no
  backfill to wait for: the second requests read the log too;
- ``first_post_ms`` and ``rss_every_room_loaded_mb``: one message posted to every room (as a
  gateway's command; each loads its room from the tail of its subject), and the memory after;
- ``after_a_restart``: the service stops (saving the presence picture and every room it has in
  memory as snapshots) and starts again: the same figures, history and recovery now answered
  from the rooms' snapshots, and every room's next post loading it from its snapshot.

    python -m ops.bench.chat_start --messages 1000000 --rooms 1000
    atomic-guide bench chat_start --messages 200000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats

from ops.bench.harness import p50_p99_ms
from ops.natsd import start_nats
from shared import subjects
from shared.schemas.commands import HistoryReply, HistoryRequest
from shared.schemas.events import ChatMessagePosted, UserJoined, UserLeft, encode_event
from shared.schemas.wire import encode

__all__ = ["main", "run"]


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


async def _fill(url: str, messages: int, rooms: int) -> list[int]:
    from ops.streams import ensure_streams

    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    await ensure_streams(js)
    seqs = [0] * rooms
    now = int(time.time() * 1000) - messages  # a message a millisecond, ending now
    for i in range(messages):
        room = i % rooms
        seqs[room] += 1
        ev = ChatMessagePosted(
            contextId=f"course-{room}",
            ts=now + i,
            messageId=f"m{i}",
            seq=seqs[room],
            userId=f"user-{i % 997}",
            userName="A Learner",
            content="a course message of ordinary length, as learners write them",
        )
        await js.publish_async(subjects.chat_messages(ev.contextId), encode_event(ev))
        if (i + 1) % 200_000 == 0:
            await js.publish_async_completed()
            _log(f"appended {i + 1:,}/{messages:,}")
    await js.publish_async_completed()
    await nc.close()
    return seqs


async def _fill_presence(url: str, events: int, rooms: int) -> None:
    """Sockets opening and closing: a join, later a leave, for ever new users (the presence
    events a long-lived deployment piles up; one in 5,000 users stays)."""
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    now = int(time.time() * 1000)
    for i in range(events):
        user, ctx = f"visitor-{i // 2}", f"course-{(i // 2) % rooms}"
        kind = UserJoined if i % 2 == 0 or (i // 2) % 5000 == 0 else UserLeft
        ev = kind(contextId=ctx, ts=now, userId=user, userName="A Visitor")
        await js.publish_async(subjects.chat_presence(ctx), encode_event(ev))
    await js.publish_async_completed()
    await nc.close()


@contextlib.asynccontextmanager
async def _chat_started(
    url: str, env: dict[str, str], log: Any
) -> AsyncIterator[tuple[subprocess.Popen[bytes], float]]:
    """A chat service process and its seconds from spawn to ready; stopped with SIGTERM after
    (it saves its presence snapshot then)."""
    nc = await nats.connect(url)
    ready: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def on_ready(_: Any) -> None:
        if not ready.done():
            ready.set_result(time.perf_counter())

    await nc.subscribe(subjects.CHAT_READY, cb=on_ready)
    await nc.flush()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.chat"], env=env, stdout=log, stderr=log
    )
    try:
        yield proc, await asyncio.wait_for(ready, 600) - started
    finally:
        proc.terminate()
        proc.wait(30)
        await nc.close()


def _rss(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def _measure(
    url: str, env: dict[str, str], seqs: list[int], samples: int, log: Any
) -> dict[str, Any]:
    """One start: ready time, memory, history and recovery of rooms not in memory, then one
    message into every room (each loads it) and the memory after."""
    off = ("0", "false", "no", "off")
    backfill = env.get("AG_CHAT_SNAPSHOT_BACKFILL", "true").strip().lower() not in off
    nc = await nats.connect(url)
    try:
        async with _chat_started(url, env, log) as (proc, ready_s):
            rss, peak = _rss(proc.pid)
            made = asyncio.create_task(_snapshots_made(nc, len(seqs))) if backfill else None
            history, recovery = await _reads(nc, seqs, samples)
            backfill_s = await made if made is not None else None
            history_now, recovery_now = await _reads(nc, seqs, samples)
            rss_after, peak_after = _rss(proc.pid)
            posts = await _post_everywhere(url, len(seqs))
            rss_loaded, peak_loaded = _rss(proc.pid)
    finally:
        await nc.close()
    return {
        "ready_s": round(ready_s, 2),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(max(peak, peak_after), 1),
        "rss_after_reads_mb": round(rss_after, 1),
        "history_ms": p50_p99_ms(history),
        "recovery_ms": p50_p99_ms(recovery),
        "backfill_s": round(backfill_s, 2) if backfill_s is not None else None,
        "history_after_backfill_ms": p50_p99_ms(history_now),
        "recovery_after_backfill_ms": p50_p99_ms(recovery_now),
        "first_post_ms": p50_p99_ms(posts),
        "rss_every_room_loaded_mb": round(rss_loaded, 1),
        "peak_rss_mb_overall": round(max(peak, peak_after, peak_loaded), 1),
    }


async def _snapshots_made(nc: Any, rooms: int) -> float:
    """Seconds until every room has a snapshot (the service's backfill), counted by the
    bucket's keys every 0.2 s."""
    from nats.js.errors import NoKeysError

    kv = await nc.jetstream().key_value(subjects.SNAPSHOTS_BUCKET)
    started = time.perf_counter()
    while True:
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        if sum(k.startswith("chat.room.") for k in keys) >= rooms:
            return time.perf_counter() - started
        if time.perf_counter() - started > 600:
            raise RuntimeError("the rooms' snapshots were not all made in 10 minutes")
        await asyncio.sleep(0.2)  # polling the bucket: the service announces nothing


async def _reads(nc: Any, seqs: list[int], samples: int) -> tuple[list[float], list[float]]:
    """History (newest 50) and recovery (100 behind) of random rooms, each timed."""
    rng = random.Random(1)
    decoder = msgspec.json.Decoder(HistoryReply)

    async def timed(req: HistoryRequest) -> float:
        t = time.perf_counter()
        raw = (await nc.request(subjects.RPC_CHAT_HISTORY, encode(req))).data
        assert decoder.decode(raw).messages, "a room of the log answered no history"
        return time.perf_counter() - t

    history, recovery = [], []
    for _ in range(samples):
        room = rng.randrange(len(seqs))
        ctx = f"course-{room}"
        history.append(await timed(HistoryRequest(ctx, limit=50)))
        after = max(seqs[room] - 100, 0)
        recovery.append(await timed(HistoryRequest(ctx, afterSeq=after)))
    return history, recovery


async def _post_everywhere(url: str, rooms: int) -> list[float]:
    """One message into every room, 20 at a time, as a gateway sends commands: each is the
    room's first use since start, so the time includes loading it from the log."""
    import uuid

    from ops.sim.gateway import StandInGateway
    from shared.bus.nats import connect
    from shared.config import load_settings
    from shared.schemas.commands import PostMessage
    from shared.timefmt import now_ms

    bus = await connect(load_settings({"AG_NATS_URL": url}), "bench-chat-start")
    latencies: list[float] = []
    gate = asyncio.Semaphore(20)

    async def post(gateway: StandInGateway, room: int) -> None:
        async with gate:
            cmd = PostMessage(
                requestId=uuid.uuid4().hex,
                contextId=f"course-{room}",
                origin=gateway.origin(f"c{room}", "bench"),
                content="hello again",
                messageType="text",
                clientId=None,
                deadline=now_ms() + 600_000,
            )
            started = time.perf_counter()
            # Every room loads from its tail at once here: slow on a slow day, never lost.
            result = await gateway.call(subjects.chat_commands(cmd.contextId), cmd, 600.0)
            if result.ok is None:
                raise RuntimeError(f"post refused: {result}")
            latencies.append(time.perf_counter() - started)

    async with StandInGateway(bus) as gateway:
        await asyncio.gather(*(post(gateway, r) for r in range(rooms)))
    await bus.close()
    return latencies


def run(
    messages: int, rooms: int, samples: int, sync_interval: str, presence: int = 0
) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="ag-bench-chat-start-"))
    server = start_nats(data / "nats", sync_interval, data / "nats.log")
    try:
        _log(f"appending {messages:,} chat messages over {rooms:,} rooms")
        started = time.perf_counter()
        seqs = asyncio.run(_fill(server.url, messages, rooms))
        _log(f"    {messages / (time.perf_counter() - started):,.0f} events/s")
        if presence:
            _log(f"appending {presence:,} presence events (sockets opened and closed)")
            asyncio.run(_fill_presence(server.url, presence, rooms))
        env = {
            **os.environ,
            "AG_NATS_URL": server.url,
            "AG_DATA_DIR": str(data),
            "AG_LOG_LEVEL": "warning",
        }
        _log("starting the chat service on it")
        with open(data / "chat.log", "ab") as log:
            result = asyncio.run(_measure(server.url, env, seqs, samples, log))
            # The first start had no snapshots: it read every presence event, and rooms not in
            # memory from the log. It saved them when it stopped; the next start uses them.
            again = asyncio.run(_measure(server.url, env, seqs, samples, log))
        return {
            "messages": messages,
            "rooms": rooms,
            "presence_events": presence,
            **result,
            "after_a_restart": again,
        }
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m ops.bench.chat_start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--rooms", type=int, default=1000)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--sync-interval", default="2m")
    p.add_argument("--presence", type=int, default=200_000, help="presence events in the log")
    a = p.parse_args(argv)
    result = run(a.messages, a.rooms, a.samples, a.sync_interval, a.presence)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
