"""Chat fan-out benchmark: 1 room x N subscribers, one sender at stepped rates.

Reports, per offered rate: achieved send rate, deliveries (expected vs received: loss), time to
drain after the last send, and the sender's ack latency p50/p99. "Sustained with no loss" = every
message delivered to every subscriber and the backlog drained within 2 s of the last send.

Subscribers run in a separate process so their parsing does not steal the sender's loop.
    python -m ops.bench.chat --subscribers 100 --rates 250,500,1000 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import time
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import websockets

from ops.bench.harness import BenchStack

CONTEXT = "bench-room"


def _subscribers(url_tokens: list[str], counter: Synchronized[int], ready: Any) -> None:
    async def one(url: str, local: list[int]) -> None:
        async with websockets.connect(url, max_queue=None) as ws:
            async for raw in ws:
                if isinstance(raw, str) and raw.startswith('{"type":"message"'):
                    local[0] += 1

    async def main() -> None:
        local = [0]
        tasks = []
        for url in url_tokens:
            tasks.append(asyncio.create_task(one(url, local)))
        await asyncio.sleep(2)  # let every socket connect before saying ready
        ready.set()
        while True:
            await asyncio.sleep(0.05)
            with counter.get_lock():
                counter.value += local[0]
            local[0] = 0

    asyncio.run(main())


async def _sender(
    url: str, rate: float, duration: float, counter: Any, expected_per_msg: int
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    lat: list[float] = []
    errors = 0
    async with websockets.connect(url, max_queue=None) as ws:
        while True:  # skip connected/presence
            f = json.loads(await ws.recv())
            if f["type"] == "presence":
                break

        async def reader(total: int) -> None:
            nonlocal errors
            async for raw in ws:
                if isinstance(raw, str) and raw.startswith(('{"type":"ack"', '{"type":"error"')):
                    f = json.loads(raw)
                    if f["type"] == "error":
                        errors += 1
                        lat.append(float("nan"))
                    else:
                        lat.append(time.perf_counter() - sent[f["id"]])
                    if len(lat) >= total:
                        return

        total = int(rate * duration)
        with counter.get_lock():
            base = counter.value
        rd = asyncio.create_task(reader(total))
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            mid = f"b{rate}-{i}"
            sent[mid] = time.perf_counter()
            await ws.send(json.dumps({"type": "message", "id": mid, "data": {"content": f"m{i}"}}))
        send_end = time.perf_counter()
        await asyncio.wait_for(rd, 60)
        expected = total * expected_per_msg
        drained_at = None
        while time.perf_counter() - send_end < 30:
            if counter.value - base >= expected:
                drained_at = time.perf_counter()
                break
            await asyncio.sleep(0.01)
        got = counter.value - base
    ok = [x for x in lat if x == x]
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    return {
        "offered_per_s": rate,
        "sent": total,
        "achieved_send_per_s": round(total / (send_end - t0), 1),
        "errors": errors,
        "deliveries_expected": expected,
        "deliveries": got,
        "lost": expected - got,
        "drain_s": round(drained_at - send_end, 3) if drained_at else None,
        "ack_p50_ms": round(q[49] * 1000, 2),
        "ack_p99_ms": round(q[98] * 1000, 2),
    }


def run(
    subscribers: int, rates: list[float], duration: float, sync_interval: str
) -> list[dict[str, Any]]:
    results = []
    with BenchStack(["chat", "gateway"], sync_interval=sync_interval) as stack:
        urls = [
            stack.ws_url("/api/chat/ws", stack.token(f"sub{i}", CONTEXT), CONTEXT)
            for i in range(subscribers)
        ]
        counter: Synchronized[int] = mp.Value("q", 0)  # type: ignore[assignment]
        ready = mp.Event()
        proc = mp.Process(target=_subscribers, args=(urls, counter, ready), daemon=True)
        proc.start()
        try:
            if not ready.wait(60):
                raise TimeoutError("subscribers did not connect")
            sender_url = stack.ws_url("/api/chat/ws", stack.token("sender", CONTEXT), CONTEXT)
            for rate in rates:
                res = asyncio.run(_sender(sender_url, rate, duration, counter, subscribers))
                res["sustained"] = (
                    res["lost"] == 0
                    and res["drain_s"] is not None
                    and res["drain_s"] <= 2
                    and res["errors"] == 0
                )
                results.append(res)
                print(json.dumps(res), flush=True)
        finally:
            proc.terminate()
            proc.join(5)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--rates", default="250,500,1000,1500,2000")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--sync-interval", default="always", help="nats-server JetStream sync_interval")
    a = p.parse_args(argv)
    results = run(
        a.subscribers, [float(r) for r in a.rates.split(",")], a.duration, a.sync_interval
    )
    best = max((r["offered_per_s"] for r in results if r["sustained"]), default=None)
    print(
        f"highest sustained rate with no loss: {best} msg/s "
        f"({a.subscribers} subscribers, sync_interval={a.sync_interval})"
    )


if __name__ == "__main__":
    main()
