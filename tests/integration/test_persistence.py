"""State is a projection of the log: restarts of the chat service and of the whole stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    TEST_ENV,
    Client,
    Stack,
    free_port,
    http_status,
    token,
    wait_chat_ready,
    wait_until,
)

pytestmark = pytest.mark.integration


async def send(c: Client, i: str, text: str) -> dict:
    return (await c.request({"type": "message", "id": i, "data": {"content": text}}, "ack"))["data"]


async def test_history_and_seq_continue_after_chat_service_restart(make_stack) -> None:
    stack: Stack = await make_stack()
    a = await Client.connect(stack.url(token=token("alice", "p1"), contextId="p1"))
    await a.expect("connected")
    for i in range(3):
        await send(a, f"m{i}", f"before {i}")
    stack.services["chat"].stop(signal.SIGKILL)  # a crash, not a clean stop
    stack.services["chat"].start()
    await wait_chat_ready(stack.nats_url)
    hist = await a.request({"type": "history", "id": "h", "data": {}}, "history")
    assert [m["content"] for m in hist["data"]["messages"]] == [f"before {i}" for i in range(3)]
    ack = await send(a, "m3", "after")
    assert ack["seq"] == 4
    # dedup survives the restart too: it is rebuilt from the log
    again = await send(a, "m1", "before 1")
    assert again["seq"] == 2


def _up(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("AG_NATS_URL", "AG_JWT_SECRET")}
    env.update({k: v for k, v in TEST_ENV.items() if k not in ("AG_JWT_SECRET",)})
    with open(data_dir.parent / f"up-{port}.log", "ab") as log:  # the child keeps its copy
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "up",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(60)


async def test_whole_stack_restart_on_the_same_data_dir_keeps_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    up = _up(data, port)
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 60, "stack up")
        secret = (data / "jwt_secret").read_text().strip()
        url = (data / "nats.url").read_text().strip()
        await wait_chat_ready(url)
        tok = token("alice", "s1", secret=secret)
        a = await Client.connect(f"ws://127.0.0.1:{port}/api/chat/ws?contextId=s1&token={tok}")
        await a.expect("connected")
        assert (await send(a, "x1", "first life"))["seq"] == 1
        stopped = _stop(up)
        assert stopped == 0
        assert await a.closed() == 1001
        assert not (data / "nats.url").exists()

        up = _up(data, port)
        wait_until(
            lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 60, "stack up again"
        )
        await wait_chat_ready((data / "nats.url").read_text().strip())
        assert (data / "jwt_secret").read_text().strip() == secret  # same dev secret
        b = await Client.connect(f"ws://127.0.0.1:{port}/api/chat/ws?contextId=s1&token={tok}")
        await b.expect("connected")
        hist = await b.request({"type": "history", "id": "h", "data": {}}, "history")
        assert [m["content"] for m in hist["data"]["messages"]] == ["first life"]
        assert (await send(b, "x2", "second life"))["seq"] == 2
    finally:
        if up.poll() is None:
            _stop(up)


async def test_two_chat_services_never_hand_out_a_seq_twice(make_stack) -> None:
    """Both consume the same command queue; JetStream's expected-last-subject-sequence check makes
    the loser of each race re-read the room and retry, so seqs stay unique and gapless."""
    stack: Stack = await make_stack()
    from tests.helpers import Proc

    second = Proc("chat2", "services.chat", stack.env, stack.tmp / "chat2.log")
    second.start()
    try:
        await wait_chat_ready(stack.nats_url)
        clients = []
        for i in range(4):
            c = await Client.connect(stack.url(token=token(f"u{i}", "race"), contextId="race"))
            await c.expect("connected")
            clients.append(c)

        async def burst(c: Client, i: int) -> list[int]:
            seqs = []
            for k in range(15):
                await c.send({"type": "message", "id": f"{i}-{k}", "data": {"content": f"{i}-{k}"}})
            for k in range(15):
                ack = await c.expect("ack", timeout=15, where=lambda f, k=k: f["id"] == f"{i}-{k}")
                seqs.append(ack["data"]["seq"])
            return seqs

        import asyncio

        results = await asyncio.gather(*(burst(c, i) for i, c in enumerate(clients)))
        all_seqs = sorted(s for r in results for s in r)
        assert all_seqs == list(range(1, 61))
        hist = await clients[0].request(
            {"type": "history", "id": "h", "data": {"limit": 100}}, "history"
        )
        assert [m["seq"] for m in hist["data"]["messages"]] == list(range(1, 61))
    finally:
        second.stop()
