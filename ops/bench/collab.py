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
    join = {"type": "join_session", "id": "j", "data": {"sessionId": session}}
    await ws.send(json.dumps(join))
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
            elif kind == "error" and frame.get("id") == "j" and data.get("code") == "unavailable":
                await asyncio.sleep(rng.uniform(0.2, 1.0))  # as the SDK does: re-send, same id
                await ws.send(json.dumps(join))
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


async def _bench(
    url: str, tokens: list[str], seconds: float, seed: int, docs: int = 1
) -> dict[str, Any]:
    """``tokens`` editors on each of ``docs`` documents (one ``_Shared`` per document)."""
    rng = random.Random(seed)
    sessions = [f"bench-{seed}-{d}" for d in range(docs)]
    shared = {s: _Shared() for s in sessions}
    stop_at = time.monotonic() + seconds
    started = time.perf_counter()
    clients = {
        s: [
            asyncio.create_task(
                _client(url, tok, s, random.Random(rng.random()), stop_at, shared[s])
            )
            for tok in tokens
        ]
        for s in sessions
    }
    every = [c for cs in clients.values() for c in cs]
    while sum(sh.synced for sh in shared.values()) < len(every) and not any(
        c.done() for c in every
    ):
        await asyncio.sleep(0.05)  # polling the clients' progress
    elapsed = time.perf_counter() - started
    converged = True
    for s in sessions:
        content, version = await _snapshot(url, tokens[0], s)
        shared[s].target = version
        editors = await asyncio.wait_for(asyncio.gather(*clients[s]), 30)
        converged &= all(ed.text == content and ed.version == version for ed in editors)
    acked = sum(sh.acked for sh in shared.values())
    return {
        "documents": docs,
        "editors_per_document": len(tokens),
        "seconds": round(elapsed, 2),
        "edits": acked,
        "edits_per_s": round(acked / elapsed, 1),
        **_percentiles([x for sh in shared.values() for x in sh.latencies]),
        "converged": converged,
    }


def _percentiles(latencies: list[float]) -> dict[str, float]:
    from ops.bench.harness import p50_p99_ms

    q = p50_p99_ms(latencies)
    return {"ack_p50_ms": q["p50"], "ack_p99_ms": q["p99"]}


async def _direct(url: str, docs: int, editors: int, seconds: float) -> dict[str, Any]:
    """The service alone: virtual editors submit edit commands straight to the work queue (as a
    gateway does) and wait for each result, one in flight each; no gateway, no sockets."""
    import uuid

    from ops.sim.gateway import StandInGateway
    from shared import subjects
    from shared.bus.nats import connect
    from shared.config import load_settings
    from shared.schemas.commands import EditCommand
    from shared.timefmt import now_ms

    bus = await connect(load_settings({"AG_NATS_URL": url}), "bench-collab-direct")
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def editor(gateway: StandInGateway, doc: str, i: int) -> int:
        version = done = 0
        origin = gateway.origin(f"{doc}-{i}", f"u{i}")
        subject = subjects.collab_commands("bench", doc)
        while time.monotonic() < stop_at:
            cmd = EditCommand(
                requestId=uuid.uuid4().hex,
                contextId="bench",
                sessionId=doc,
                origin=origin,
                operation="insert",
                position=0,
                version=version,
                content="x",
                deadline=now_ms() + 10_000,
            )
            sent = time.perf_counter()
            result = await gateway.call(subject, cmd, 15)
            latencies.append(time.perf_counter() - sent)
            if result.ok is None:
                raise RuntimeError(f"edit refused: {result}")
            version = result.ok["version"]
            done += 1
        return done

    started = time.perf_counter()
    async with StandInGateway(bus) as gateway:
        counts = await asyncio.gather(
            *(editor(gateway, f"direct-{d}", i) for d in range(docs) for i in range(editors))
        )
    elapsed = time.perf_counter() - started
    await bus.close()
    return {
        "mode": "service only (no gateway, no sockets)",
        "documents": docs,
        "editors_per_document": editors,
        "seconds": round(elapsed, 2),
        "edits": sum(counts),
        "edits_per_s": round(sum(counts) / elapsed, 1),
        **_percentiles(latencies),
    }


def run(
    editors: int = 10,
    seconds: float = 10.0,
    seed: int = 0,
    docs: int = 1,
    direct: bool = False,
) -> dict[str, Any]:
    from ops.bench.harness import BenchStack

    sync = os.environ.get("AG_NATS_SYNC_INTERVAL", "always")
    with BenchStack(["collaboration", "gateway"], sync_interval=sync) as stack:
        assert stack.nats is not None
        asyncio.run(_wait_service(stack.nats.url))
        if direct:
            return asyncio.run(_direct(stack.nats.url, docs, editors, seconds))
        tokens = [stack.token(f"u{i}", "bench") for i in range(editors)]
        url = f"ws://127.0.0.1:{stack.port}/api/collaboration/ws"
        return asyncio.run(_bench(url, tokens, seconds, seed, docs))


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
    parser.add_argument("--docs", type=int, default=1, help="documents, each with `editors`")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="the collaboration service alone: commands straight onto NATS, no sockets",
    )
    args = parser.parse_args(argv)
    result = run(args.editors, args.seconds, args.seed, args.docs, args.direct)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
