"""Analytics benchmarks: DuckDB ingest rate, a 1,000,000-event replay, event -> socket latency.

    python -m ops.bench.analytics                      # everything, 1,000,000 events
    python -m ops.bench.analytics --events 200000 --only ingest,replay
    atomic-guide bench analytics --only latency

(a) ingest, three ways:
    - ``projector``: ``Projector.apply`` in-process on pre-encoded events (decode into columns,
      validate, one Arrow insert + checkpoint per ``--batch`` events): the DuckDB path alone;
    - ``read``: the whole log read once with nats-py's pull ``fetch`` (the baseline: the raw
      library) and once with ``Bus.tail`` (the project's own parser), and their ratio;
    - ``aggregator``: a real ``python -m services.analytics`` process catching up on the whole
      backlog in the stream (tail, decode, insert, commit, metric recomputation).
(b) replay: ``atomic-guide replay --no-swap`` as a subprocess on the same stream (rebuild into a
    fresh file with the progress bar, then verification against the running aggregator).
(c) latency: nats-server + chat + gateway + aggregator; instructor sockets subscribed to
    ``activity`` of ``--contexts`` contexts; chat events are appended to the log one at a time
    (``js.publish``) and the time from the append's ack to the ``metric_update`` showing it at the
    socket is recorded. Each context gets at most one event per 1.2 s, so the protocol's
    once-per-second throttle does not add to what is measured.

The generated log (realistic mix: chat messages, presence, edits, assessments over 100 contexts
and 24 h) is written with async JetStream publishes. For (a) and (b) this benchmark starts its own
nats-server with ``sync_interval`` relaxed (``--sync-interval``, default ``2m``), because with
``always`` (the stack's default: fsync before every ack) writing a million events alone takes
long; reading them back is unaffected. (c) runs with ``always``, as the stack does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import websockets

from ops.natsd import start_nats
from ops.sim.events import random_event
from services.analytics.projection import Projector
from services.analytics.store import Store
from shared import subjects
from shared.bus.port import Entry
from shared.schemas.analytics import CurrentReply, CurrentRequest
from shared.schemas.wire import encode

__all__ = ["main", "run"]

DAY_MS = 86_400_000
_enc = msgspec.json.Encoder()


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def generate(n: int, now: int, seed: int = 1, contexts: int = 100) -> list[tuple[str, bytes]]:
    """n events, oldest first, spread over the last 24 h."""
    rnd = random.Random(seed)
    step = DAY_MS / max(n, 1)
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        ctx = f"course-{rnd.randrange(contexts)}"
        user = f"user-{rnd.randrange(1000)}"
        subject, ev = random_event(rnd, i, ctx, user, int(now - DAY_MS + i * step))
        out.append((subject, _enc.encode(ev)))
    return out


async def fill(url: str, events: list[tuple[str, bytes]]) -> float:
    """Append events to the log with async publishes; returns events/s."""
    from ops.streams import ensure_streams

    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    await ensure_streams(js)
    started = time.perf_counter()
    for i, (subject, data) in enumerate(events, 1):
        await js.publish_async(subject, data)
        if i % 100_000 == 0:
            await js.publish_async_completed()
            _log(f"appended {i:,}/{len(events):,}")
    await js.publish_async_completed()
    rate = len(events) / (time.perf_counter() - started)
    info = await js.stream_info(subjects.EVENTS_STREAM)
    await nc.close()
    if info.state.messages < len(events):
        raise RuntimeError(f"only {info.state.messages} of {len(events)} events stored")
    return rate


# --- (a) ingest ---------------------------------------------------------------------------------
def bench_projector(events: list[tuple[str, bytes]], batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ag-bench-proj-") as tmp:
        store = Store(Path(tmp) / "events.duckdb")
        projector = Projector(store)
        items = [Entry(i + 1, s, d) for i, (s, d) in enumerate(events)]
        started = time.perf_counter()
        for i in range(0, len(items), batch):
            projector.apply(items[i : i + batch])
        seconds = time.perf_counter() - started
        stored, invalid = store.counts()
        store.close()
    assert stored + invalid == len(events)
    return {
        "events": len(events),
        "batch": batch,
        "seconds": round(seconds, 2),
        "events_per_s": round(len(events) / seconds),
    }


async def bench_read(url: str, total: int) -> dict[str, Any]:
    """Read the whole log twice, touching each message's sequence, subject and data: with
    nats-py's pull ``fetch`` (what the aggregator used before), then with ``Bus.tail``."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from shared.bus.nats import connect
    from shared.config import load_settings

    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        subjects.EVENTS_ALL,
        durable="bench-read",
        stream=subjects.EVENTS_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, mem_storage=True),
    )
    started, n = time.perf_counter(), 0
    while n < total:
        for m in await sub.fetch(10_000, timeout=10):
            n += bool(m.metadata.sequence.stream and m.subject and m.data)
    nats_py = n / (time.perf_counter() - started)
    await sub.unsubscribe()
    await js.delete_consumer(subjects.EVENTS_STREAM, "bench-read")
    await nc.close()

    bus = await connect(load_settings({"AG_NATS_URL": url}), "bench-read")
    tail = bus.tail(subjects.EVENTS_ALL, 1)
    started, n = time.perf_counter(), 0
    while n < total:
        for e in await tail.fetch(20_000, 10):
            n += bool(e.seq and e.subject and e.data)
    tailed = n / (time.perf_counter() - started)
    await tail.close()
    await bus.close()
    return {
        "nats_py_fetch_per_s": round(nats_py),
        "tail_per_s": round(tailed),
        "ratio": round(tailed / nats_py, 1),
    }


async def _seq(nc: Any) -> int | None:
    req = CurrentRequest(contextIds=["__probe__"], metrics=["performance"])
    try:
        msg = await nc.request(subjects.RPC_METRICS_CURRENT, encode(req), timeout=2)
    except Exception:
        return None
    return msgspec.json.decode(msg.data, type=CurrentReply).seq


async def bench_aggregator(url: str, env: dict[str, str], total: int) -> tuple[Any, dict[str, Any]]:
    """Start the aggregator on a full log; time until its checkpoint reaches the end."""
    nc = await nats.connect(url)
    log = open(Path(env["AG_DATA_DIR"]) / "analytics.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.analytics"], env=env, stdout=log, stderr=log
    )
    spawned = time.perf_counter()
    first: tuple[float, int] | None = None
    while True:
        seq = await _seq(nc)
        now = time.perf_counter()
        if seq is not None and first is None:
            first = (now, seq)
        if seq is not None and seq >= total:
            break
        if proc.poll() is not None:
            raise RuntimeError("the aggregator exited; see analytics.log")
        await asyncio.sleep(0.25)  # polling another process's progress
    await nc.close()
    assert first is not None
    t0, s0 = first
    done = time.perf_counter()
    result = {
        "events": total,
        "seconds_from_spawn": round(done - spawned, 2),
        "events_per_s": round((total - s0) / max(done - t0, 1e-9)),
    }
    return proc, result


# --- (b) replay ---------------------------------------------------------------------------------
def bench_replay(env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "ops.cli", "replay", "--no-swap"],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    lines = [ln for ln in out.stderr.splitlines() if not ln.startswith("\r")]
    summary = [ln.split("\r")[-1] for ln in lines if "[replay]" in ln]
    for ln in summary:
        _log(ln)
    if out.returncode != 0:
        raise RuntimeError(f"replay failed:\n{out.stderr[-3000:]}\n{out.stdout}")
    rebuilt = next((ln for ln in summary if " events (" in ln), "")
    rebuild_s = float(rebuilt.rsplit(" in ", 1)[1].split("s ", 1)[0]) if rebuilt else None
    return {
        "command": "atomic-guide replay --no-swap",
        "wall_seconds": round(seconds, 1),
        "rebuild_seconds": rebuild_s,
        "verified": "[replay] verified" in out.stderr,
    }


def run_backlog(n: int, batch: int, sync_interval: str, only: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if not only & {"ingest", "replay"}:
        return results
    now = int(time.time() * 1000)
    _log(f"generating {n:,} events")
    events = generate(n, now)
    if "ingest" in only:
        _log("(a1) Projector.apply in-process")
        results["ingest_projector"] = bench_projector(events, batch)
        _log(f"    {results['ingest_projector']}")
    if not only & {"ingest", "replay"}:
        return results
    data = Path(tempfile.mkdtemp(prefix="ag-bench-analytics-"))
    server = start_nats(data, sync_interval, data / "nats.log")
    env = {
        **os.environ,
        "AG_NATS_URL": server.url,
        "AG_DATA_DIR": str(data),
        "AG_LOG_LEVEL": "warning",
        "AG_ANALYTICS_BATCH": str(batch),
    }
    proc = None
    try:
        _log(f"appending {n:,} events to a nats-server with sync_interval={sync_interval}")
        results["log_append_events_per_s"] = round(asyncio.run(fill(server.url, events)))
        del events
        _log("(a2) reading the log: nats-py batch fetch (the baseline) against the log tail")
        results["read"] = asyncio.run(bench_read(server.url, n))
        _log(f"    {results['read']}")
        _log("(a3) the aggregator process catching up on the backlog")
        proc, results["ingest_aggregator"] = asyncio.run(bench_aggregator(server.url, env, n))
        _log(f"    {results['ingest_aggregator']}")
        if "replay" in only:
            _log("(b) atomic-guide replay")
            results["replay"] = bench_replay(env)
            _log(f"    {results['replay']}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    return results


# --- (c) latency --------------------------------------------------------------------------------
def bench_latency(samples: int, contexts: int) -> dict[str, Any]:
    from ops.bench.harness import BenchStack

    stack = BenchStack(["chat", "gateway", "analytics"], sync_interval="always")
    try:
        with stack:
            return asyncio.run(_latency(stack, samples, contexts))
    finally:
        shutil.rmtree(stack.dir, ignore_errors=True)


async def _latency(stack: Any, samples: int, contexts: int) -> dict[str, Any]:
    assert stack.nats is not None
    nc = await nats.connect(stack.nats.url)
    js = nc.jetstream()
    while await _seq(nc) is None:
        await asyncio.sleep(0.1)  # polling the aggregator's readiness
    ctxs = [f"lat-{i}" for i in range(contexts)]
    seen: dict[tuple[str, int], float] = {}
    arrived = asyncio.Event()
    sockets = []

    async def reader(ws: Any, ctx: str) -> None:
        async for raw in ws:
            f = json.loads(raw)
            if f["type"] == "metric_update" and f["data"]["metric"] == "activity":
                key = (ctx, f["data"]["value"]["messages"])
                seen.setdefault(key, time.perf_counter())
                arrived.set()

    tasks = []
    for ctx in ctxs:
        tok = stack.token("dash", ctx, roles=("instructor",))
        ws = await websockets.connect(stack.ws_url("/api/analytics/ws", tok, ctx))
        await ws.send(json.dumps({"type": "subscribe", "data": {"metrics": ["activity"]}}))
        sockets.append(ws)
        tasks.append(asyncio.create_task(reader(ws, ctx)))
    while len({c for c, n in seen if n == 0}) < contexts:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 10)
    from_ack: list[float] = []
    from_send: list[float] = []
    interval = 1.2 / contexts
    counts = dict.fromkeys(ctxs, 0)
    for i in range(samples):
        ctx = ctxs[i % contexts]
        counts[ctx] += 1
        ev = {
            "type": "chat.message",
            "contextId": ctx,
            "ts": int(time.time() * 1000),
            "messageId": f"m{i}",
            "seq": counts[ctx],
            "userId": "u",
            "userName": "U",
            "content": "x",
        }
        t_send = time.perf_counter()
        await js.publish(subjects.chat_messages(ctx), _enc.encode(ev))
        t_ack = time.perf_counter()
        key = (ctx, counts[ctx])
        deadline = t_send + 10
        while key not in seen and time.perf_counter() < deadline:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), deadline - time.perf_counter())
            except TimeoutError:
                break
        if key in seen:
            from_ack.append(seen[key] - t_ack)
            from_send.append(seen[key] - t_send)
        wait = interval - (time.perf_counter() - t_send)
        if wait > 0:
            await asyncio.sleep(wait)  # pacing: one event per context per 1.2 s
    for t in tasks:
        t.cancel()
    for ws in sockets:
        await ws.close()
    await nc.close()

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 1)

    return {
        "samples": samples,
        "received": len(from_ack),
        "contexts": contexts,
        "from_log_ack_ms": {
            "p50": pct(from_ack, 0.5),
            "p99": pct(from_ack, 0.99),
            "max": pct(from_ack, 1.0),
            "mean": round(statistics.mean(from_ack) * 1000, 1),
        },
        "from_publish_ms": {"p50": pct(from_send, 0.5), "p99": pct(from_send, 0.99)},
    }


def run(
    events: int = 1_000_000,
    batch: int = 1000,
    sync_interval: str = "2m",
    samples: int = 300,
    contexts: int = 20,
    only: set[str] | None = None,
) -> dict[str, Any]:
    only = only or {"ingest", "replay", "latency"}
    results = run_backlog(events, batch, sync_interval, only)
    if "latency" in only:
        _log(f"(c) event -> metric_update latency, {samples} samples over {contexts} contexts")
        results["latency"] = bench_latency(samples, contexts)
        _log(f"    {results['latency']}")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=20000, help="events per DuckDB transaction")
    p.add_argument("--sync-interval", default="2m", help="nats-server sync_interval for (a), (b)")
    p.add_argument("--samples", type=int, default=300, help="latency samples")
    p.add_argument("--contexts", type=int, default=20, help="latency: contexts/sockets")
    p.add_argument("--only", default="ingest,replay,latency")
    a = p.parse_args(argv)
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    results = run(a.events, a.batch, a.sync_interval, a.samples, a.contexts, only)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
