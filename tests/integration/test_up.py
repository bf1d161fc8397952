"""`atomic-guide up` as an operator meets it: NATS supervised, no orphans however `up` dies, one
stack per data dir, and tools that fail fast when the stack is gone (README, "CLI")."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import T
from tests.helpers import ROOT, Client, http_status, token, wait_until
from tests.integration.up_support import UpStack

pytestmark = pytest.mark.integration


@pytest.fixture
def up(tmp_path: Path):  # type: ignore[no-untyped-def]
    stacks: list[UpStack] = []

    def make(**kw: object) -> UpStack:
        stack = UpStack(tmp_path / f"up{len(stacks)}", **kw)  # type: ignore[arg-type]
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.cleanup()


async def send_until_acked(c: Client, i: str, timeout: float = 30) -> int:
    """Send ``i`` until it is acknowledged, re-sending the same id after `unavailable`."""
    deadline = time.monotonic() + T(timeout)
    while True:
        reply = await c.request(
            {"type": "message", "id": i, "data": {"content": i}}, ("ack", "error"), timeout=10
        )
        if reply["type"] == "ack":
            return int(reply["data"]["seq"])
        assert reply["data"]["code"] == "unavailable", reply
        assert time.monotonic() < deadline, "never acknowledged"
        await asyncio.sleep(0.2)  # back off before re-sending, as a client does


def cli(stack: UpStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args, "--data-dir", str(stack.data_dir)],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=T(30),
    )


def nothing_left(stack: UpStack, timeout: float = 20) -> None:
    wait_until(lambda: not stack.alive(), timeout, f"children to exit: {stack.alive()}")


async def test_a_killed_nats_server_is_restarted_on_its_store_and_nothing_acked_is_lost(
    up,  # type: ignore[no-untyped-def]
) -> None:
    stack = up().start()
    c = await Client.connect(stack.url(token=token("ann", "r"), contextId="r"))
    await c.expect("connected")
    before = [await send_until_acked(c, f"m{i}") for i in range(5)]
    old = stack.kill("nats")
    stack.wait_restarted("nats", old)
    after = [await send_until_acked(c, f"m{i}") for i in range(5, 10)]
    assert before + after == list(range(1, 11))
    hist = await c.request({"type": "history", "id": "h", "data": {}}, "history")
    assert [m["content"] for m in hist["data"]["messages"]] == [f"m{i}" for i in range(10)]
    assert "nats exited" in stack.tail(10**6)


async def test_ctrl_c_through_a_pipe_stops_every_child(up) -> None:  # type: ignore[no-untyped-def]
    stack = up(pipe=True).start()
    children = stack.alive()
    assert len(children) == 5  # nats-server and four services
    assert stack.proc is not None
    os.killpg(stack.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: `tee` dies too
    nothing_left(stack)
    assert stack.proc.wait(T(30)) is not None


async def test_a_killed_up_leaves_nothing_running_and_its_data_dir_is_taken_over(
    up,  # type: ignore[no-untyped-def]
) -> None:
    first = up().start()
    second = UpStack(first.tmp.parent / "second", env=first.env)
    second.data_dir = first.data_dir
    started = time.monotonic()
    refused = subprocess.run(
        second.command(), env=second.env, cwd=ROOT, capture_output=True, text=True, timeout=T(30)
    )
    assert refused.returncode == 1 and time.monotonic() - started < T(10)
    holder = first.up_pid()
    assert refused.stderr.strip() == (
        f"atomic-guide: data dir {first.data_dir} is in use by atomic-guide up (pid {holder})"
    )
    os.kill(holder, signal.SIGKILL)
    nothing_left(first)
    # The stale URL: every tool that needs NATS says so in one line, within seconds.
    for args in (["streams"], ["provision"]):
        started = time.monotonic()
        done = cli(first, *args)
        assert done.returncode == 1 and time.monotonic() - started < T(8), args
        assert "cannot reach NATS" in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    query = cli(first, "query", "SELECT count(*) AS n FROM events")  # read from the file
    assert "Traceback" not in query.stderr
    # The lock died with its holders: a new `up` takes the data dir over.
    second.tmp.mkdir(parents=True, exist_ok=True)
    second.start()
    c = await Client.connect(second.url(token=token("ann", "r"), contextId="r"))
    await c.expect("connected")
    second.stop()
    nothing_left(second)


async def test_up_serves_the_demo_and_prints_two_links_with_tokens_in_the_fragment(
    up,  # type: ignore[no-untyped-def]
) -> None:
    stack = up().start()
    wait_until(lambda: "Open the demo" in stack.tail(10**6), 30, "the demo links")
    links = re.findall(r"(learner|instructor):\s+(http://\S+)", stack.tail(10**6))
    assert [role for role, _ in links] == ["learner", "instructor"]
    for role, link in links:
        page, fragment = link.split("#", 1)
        assert page == stack.http("/demo/")  # the token is only in the fragment
        fields = dict(part.split("=", 1) for part in fragment.split("&"))
        assert fields["context"] == "course-1"
        assert http_status(page) == 200
        c = await Client.connect(stack.url(token=fields["token"], contextId="course-1"))
        connected = await c.expect("connected")
        assert connected["data"]["roles"] == [role]
    assert http_status(stack.http("/client/atomic-guide.js")) == 200


async def test_up_with_workers_runs_that_many_chat_and_collaboration_workers_sharing_partitions(
    up,  # type: ignore[no-untyped-def]
) -> None:
    stack = up(args=("--workers", "2")).start()
    workers = {"chat-1", "chat-2", "collaboration-1", "collaboration-2"}
    assert workers <= set(stack.pids())
    assert "chat" not in stack.pids()

    def holders() -> dict[str, str]:
        out = cli(stack, "streams", "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        return next(r.get("leases", {}) for r in rows if r["stream"] == "KV_AG_LEASES")

    def shared() -> bool:
        got = holders()
        chat = [v for k, v in got.items() if k.startswith("chat.p.")]
        collab = [v for k, v in got.items() if k.startswith("collab.p.")]
        return (
            sorted(set(chat)) == ["chat-1", "chat-2"]
            and len(chat) == 16
            and (sorted(set(collab)) == ["collaboration-1", "collaboration-2"])
        )

    wait_until(shared, 30, "partitions shared by both workers of each service")
    c = await Client.connect(stack.url(token=token("ann", "course-1"), contextId="course-1"))
    await c.expect("connected")
    assert await send_until_acked(c, "w1") == 1
    assert "chat.p.0" in cli(stack, "streams").stdout  # the table shows the leases too
    await c.close()
