"""End-to-end collaborative editing throughput: edits/s on one document, over real sockets.

Starts its own nats-server (fsync before every ack, as deployed; ``AG_NATS_SYNC_INTERVAL`` to
compare), the collaboration service and one gateway on free loopback ports (``BenchStack``,
rate limits raised), then runs ``editors`` WebSocket clients on one
document for ``seconds``. Each client is a real OT client (``Editor``: one edit in flight, later
local edits buffered, incoming edits transformed) that types a new edit every few milliseconds.
Reported: acknowledged edits per second (all clients together), ack latency percentiles, and
whether every client ended with the server's text and version.

    python -m ops.bench.collab [editors] [seconds] [seed]      (or: atomic-guide bench collab)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from ops.sim.editor import Editor, op_of, random_op

__all__ = ["run"]


# --- the harness ----------------------------------------------------------------------------------
@dataclass
class _Shared:
    acked: int = 0
    latencies: list[float] = field(default_factory=list)
    synced: int = 0  # clients done typing with every edit acknowledged
    target: int | None = None  # the final version, once everyone has synced


async def _client(
    url: str, token: str, session: str, rng: random.Random, stop_at: float, shared: _Shared
) -> Editor:
    import websockets

    ws = await websockets.connect(f"{url}?token={token}&contextId=bench", max_size=None)
    await ws.send(json.dumps({"type": "join_session", "id": "j", "data": {"sessionId": session}}))
    editor: Editor | None = None
    sent_at: dict[str, float] = {}
    counter = 0
    synced = False

    async def send(data: dict[str, Any] | None) -> None:
        nonlocal counter
        if data is not None:
            counter += 1
            cid = f"e{counter}"
            sent_at[cid] = time.perf_counter()
            await ws.send(json.dumps({"type": "edit", "id": cid, "data": data}))

    async def typist() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(rng.uniform(0.001, 0.005))  # think time between keystrokes
            if editor is not None and len(editor.buffer) < 4:
                await send(editor.local(random_op(rng, editor.text)))

    typing: asyncio.Task[None] | None = None
    try:
        while True:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
            except TimeoutError:
                frame = {"type": "idle"}
            kind, data = frame["type"], frame.get("data") or {}
            if kind == "session_joined":
                editor = Editor(data["document"]["content"], data["document"]["version"])
                typing = asyncio.create_task(typist())
            elif kind == "edit" and editor is not None:
                editor.remote(op_of(data), data["version"])
            elif kind == "ack" and editor is not None:
                shared.latencies.append(time.perf_counter() - sent_at.pop(frame["id"]))
                shared.acked += 1
                await send(editor.ack(data["version"]))
            elif kind == "error":
                raise RuntimeError(f"server error: {frame}")
            if editor is None or time.monotonic() < stop_at or not editor.synced:
                continue
            if not synced:
                synced = True
                shared.synced += 1
            if shared.target is not None and editor.version >= shared.target:
                break  # every edit of every client has reached this one
    finally:
        if typing is not None:
            typing.cancel()
        await ws.close()
    assert editor is not None
    return editor


async def _snapshot(url: str, token: str, session: str) -> tuple[str, int]:
    import websockets

    async with websockets.connect(f"{url}?token={token}&contextId=bench", max_size=None) as ws:
        join = {"type": "join_session", "id": "s", "data": {"sessionId": session}}
        await ws.send(json.dumps(join))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "session_joined":
                doc = frame["data"]["document"]
                return doc["content"], doc["version"]
    raise RuntimeError("no session_joined")


async def _bench(url: str, tokens: list[str], seconds: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    shared = _Shared()
    session = f"bench-{seed}"
    stop_at = time.monotonic() + seconds
    started = time.perf_counter()
    clients = [
        asyncio.create_task(
            _client(url, tok, session, random.Random(rng.random()), stop_at, shared)
        )
        for tok in tokens
    ]
    while shared.synced < len(tokens) and not any(c.done() for c in clients):
        await asyncio.sleep(0.05)  # polling the clients' progress
    elapsed = time.perf_counter() - started
    content, version = await _snapshot(url, tokens[0], session)
    shared.target = version
    editors = await asyncio.wait_for(asyncio.gather(*clients), 30)
    lat = sorted(shared.latencies) or [0.0]
    return {
        "editors": len(tokens),
        "seconds": round(elapsed, 2),
        "edits": shared.acked,
        "edits_per_s": round(shared.acked / elapsed, 1),
        "ack_p50_ms": round(lat[len(lat) // 2] * 1000, 2),
        "ack_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2),
        "version": version,
        "converged": all(ed.text == content and ed.version == version for ed in editors),
    }


def run(editors: int = 10, seconds: float = 10.0, seed: int = 0) -> dict[str, Any]:
    from ops.bench.harness import BenchStack

    sync = os.environ.get("AG_NATS_SYNC_INTERVAL", "always")
    with BenchStack(["collaboration", "gateway"], sync_interval=sync) as stack:
        assert stack.nats is not None
        asyncio.run(_wait_service(stack.nats.url))
        tokens = [stack.token(f"u{i}", "bench") for i in range(editors)]
        url = f"ws://127.0.0.1:{stack.port}/api/collaboration/ws"
        return asyncio.run(_bench(url, tokens, seconds, seed))


async def _wait_service(url: str, timeout: float = 30.0) -> None:
    """The collaboration service answers requests once it is up (/readyz does not say so)."""
    import msgspec
    import nats

    from shared.schemas.commands import CollabSnapshotRequest

    probe = msgspec.msgpack.encode(CollabSnapshotRequest("-", "-"))
    nc = await nats.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await nc.request("ag.rpc.collab", probe, timeout=0.5)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # polling until the service process answers
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.collab", description=__doc__)
    parser.add_argument("editors", nargs="?", type=int, default=10)
    parser.add_argument("seconds", nargs="?", type=float, default=10.0)
    parser.add_argument("seed", nargs="?", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.editors, args.seconds, args.seed), indent=2))


if __name__ == "__main__":
    main()
