"""Scale-out benchmark: aggregate chat throughput over many rooms with 1, 2, 3 chat workers.

For each worker count a fresh stack (nats-server, the gateway, N chat workers sharing the
command partitions) takes messages into ``--rooms`` rooms, one sender per room keeping
``--window`` messages in flight (closed loop: the highest rate the stack sustains), for
``--seconds``. Reported per row: acknowledged messages/s, send -> ack p50/p99, and CPU per
message of the chat workers together, of the gateway and of nats-server. On one 2-core machine
the workers share the cores with everything else, so the aggregate cannot grow linearly; the
chat CPU per message says what each worker costs, from which a multi-machine figure follows.

    atomic-guide bench scale --workers 1,2,3 --rooms 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from typing import Any

from ops.bench.fanout import _open_many
from ops.bench.harness import BenchStack, cpu_seconds, p50_p99_ms
from ops.bench.wsload import LoadSocket

_ACK_ID = re.compile(rb'"id":"r(\d+)-(\d+)"')


async def _drive(stack: BenchStack, rooms: int, window: int, seconds: float) -> dict[str, Any]:
    sent: dict[tuple[int, int], int] = {}
    lat: list[float] = []
    next_no = [0] * rooms
    socks: list[LoadSocket] = []
    state = {"running": True, "acked": 0}

    def send(room: int) -> None:
        n = next_no[room]
        next_no[room] += 1
        sent[(room, n)] = time.perf_counter_ns()
        frame = {"type": "message", "id": f"r{room}-{n}", "data": {"content": f"m {n}"}}
        socks[room].send_text(json.dumps(frame))

    def on_text(sock: LoadSocket, payload: bytes) -> None:
        if not payload.startswith(b'{"type":"ack"'):
            return
        hit = _ACK_ID.search(payload)
        if hit is None:
            return
        key = (int(hit.group(1)), int(hit.group(2)))
        t = sent.pop(key, None)
        if t is None:
            return
        state["acked"] += 1
        lat.append((time.perf_counter_ns() - t) / 1e9)
        if state["running"]:
            send(key[0])

    urls = [stack.chat_url(f"sender{r}", f"scale-{r}") for r in range(rooms)]
    opened, _ = await _open_many(urls, b'"type":"presence"', lambda: on_text)
    socks.extend(opened)
    pids = stack.pids
    chat = [pid for name, pid in pids.items() if name.startswith("chat")]
    groups = {
        "chat": chat,
        "gateway": [pids["gateway"]],
        "nats": [pids["nats"]],
        "load": [os.getpid()],
    }
    cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
    t0 = time.perf_counter()
    for room in range(rooms):
        for _ in range(window):
            send(room)
    await asyncio.sleep(seconds)  # the measured interval: the load runs on callbacks
    state["running"] = False
    elapsed = time.perf_counter() - t0
    acked = state["acked"]
    cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
    deadline = time.perf_counter() + 10
    while sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)  # polling for the acks of what is still in flight
    for sock in socks:
        sock.close()
    return {
        "msgs_per_s": round(acked / elapsed),
        **p50_p99_ms(lat),
        **{f"{k}_us_per_msg": round(v / max(acked, 1) * 1e6, 1) for k, v in cpu.items()},
        "chat_cores": round(cpu["chat"] / elapsed, 2),
        "load_cores": round(cpu["load"] / elapsed, 2),
        "unanswered": len(sent),
    }


def run(
    workers: list[int],
    rooms: int,
    window: int,
    seconds: float,
    sync: str = "always",
    env: dict[str, str] | None = None,
) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for n in workers:
        with BenchStack(["chat", "gateway"], env, workers=n, sync_interval=sync) as stack:
            out[n] = asyncio.run(_drive(stack, rooms, window, seconds))
        print(f"[scale] {n} worker(s): {json.dumps(out[n])}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", default="1,2,3")
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--window", type=int, default=4, help="messages in flight per room")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sync-interval", default="always", help="nats-server JetStream sync_interval")
    p.add_argument("--partitions", type=int, default=16, help="AG_PARTITIONS of the stack")
    a = p.parse_args(argv)
    counts = [int(x) for x in a.workers.split(",")]
    env = {"AG_PARTITIONS": str(a.partitions)}
    results = run(counts, a.rooms, a.window, a.seconds, a.sync_interval, env)
    print(
        "| chat workers | msg/s (acked) | ack p50 / p99 ms | chat CPU µs/msg | chat cores busy"
        " | gateway µs/msg | nats µs/msg |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, r in results.items():
        print(
            f"| {n} | {r['msgs_per_s']:,} | {r['p50']} / {r['p99']} | {r['chat_us_per_msg']}"
            f" | {r['chat_cores']} | {r['gateway_us_per_msg']} | {r['nats_us_per_msg']} |"
        )
