"""``atomic-guide chat`` (ops/chat_cli.py) as a real subprocess against the real stack."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from atomic_guide_client import Backoff, ChatClient
from atomic_guide_client._dispatch import Frame
from atomic_guide_client.frames import MessageFrame, UserJoinedFrame, UserLeftFrame

from tests.conftest import T
from tests.helpers import ROOT, Stack, token

pytestmark = pytest.mark.integration


def ctx() -> str:
    return "course-" + uuid.uuid4().hex[:8]


class Terminal:
    """``python -m ops.cli chat ...`` with pipes for stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def read_until(self, match: Callable[[str], bool], timeout: float = 10) -> list[str]:
        """Lines printed from now until (and with) the first that matches."""
        assert self.proc.stdout is not None
        got: list[str] = []
        deadline = time.monotonic() + T(timeout)
        while True:
            left = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.001))
            except TimeoutError:
                raise TimeoutError(f"no matching line; printed so far: {got}") from None
            if not raw:
                stderr = await self.stderr()
                raise AssertionError(f"chat exited; printed {got}; stderr {stderr!r}")
            line = raw.decode().rstrip("\n")
            got.append(line)
            self.lines.append(line)
            if match(line):
                return got

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()

    async def end_input(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return await asyncio.wait_for(self.proc.wait(), T(20))


@pytest.fixture
async def terminal(stack: Stack) -> AsyncIterator[Callable[..., Awaitable[Terminal]]]:
    """Start ``atomic-guide chat`` processes; every one is stopped at the end."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Terminal:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ops.cli",
            "chat",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**stack.env, "PYTHONIOENCODING": "utf-8", **(env or {})},
            cwd=ROOT,
        )
        procs.append(proc)
        return Terminal(proc)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def base_url(stack: Stack) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0][1]}"


async def test_the_terminal_chat_shows_history_then_sends_lines_and_prints_what_arrives(
    stack: Stack, terminal: Callable[..., Awaitable[Terminal]]
) -> None:
    c = ctx()
    bob = ChatClient(
        stack.url(), c, lambda: token("bob", c), backoff=Backoff(0.05, 0.3), frames_per_minute=None
    )
    arrived: list[tuple[str, str, str]] = []  # (what, user, text) as bob saw it
    changed = asyncio.Event()

    def note(frame: Frame) -> None:
        match frame:
            case MessageFrame():
                arrived.append(("message", frame.data.author.id, frame.data.content))
            case UserJoinedFrame():
                arrived.append(("joined", frame.data.user_id, ""))
            case UserLeftFrame():
                arrived.append(("left", frame.data.user_id, ""))
        changed.set()

    bob.on("*", note)

    async def bob_sees(item: tuple[str, str, str]) -> None:
        async with asyncio.timeout(T(10)):
            while item not in arrived:
                changed.clear()
                await changed.wait()

    async with bob:
        for i in range(22):
            await bob.send_message(f"earlier {i} ✨")
        carol = await terminal(
            "--context", c, "--url", base_url(stack), "--sub", "carol", "--name", "Carol",
            "--data-dir", str(stack.tmp),
        )  # fmt: skip
        start = await carol.read_until(lambda line: line.startswith("── "))
        shown = [line.split("Bob: ", 1)[1] for line in start if line.startswith("[")]
        assert shown == [f"earlier {i} ✨" for i in range(2, 22)]  # the last 20
        assert "Carol in " + c in start[-1] and "20 earlier messages" in start[-1]
        await bob_sees(("joined", "carol", ""))

        await carol.type("hi from the terminal 👋🏽")
        await bob_sees(("message", "carol", "hi from the terminal 👋🏽"))
        await carol.read_until(lambda line: line.endswith("Carol: hi from the terminal 👋🏽"))

        bob.typing(True)
        await carol.read_until(lambda line: line == "* Bob is typing…")
        await bob.send_message("hello Carol\nsecond line")
        lines = await carol.read_until(lambda line: "second line" in line)
        assert lines[-2].endswith("Bob: hello Carol") and lines[-1].strip() == "second line"

        await carol.type("/quit")
        assert await asyncio.wait_for(carol.proc.wait(), T(20)) == 0
        await bob_sees(("left", "carol", ""))


async def test_lines_typed_before_end_of_input_are_all_delivered_in_order(
    stack: Stack, terminal: Callable[..., Awaitable[Terminal]]
) -> None:
    c = ctx()
    dave = await terminal(
        "--context", c, "--url", base_url(stack), "--sub", "dave", "--history", "0",
        "--data-dir", str(stack.tmp),
    )  # fmt: skip
    start = await dave.read_until(lambda line: line.startswith("── "))
    assert start[-1].startswith("── dave in ") and "0 earlier messages" in start[-1]
    for i in range(5):
        await dave.type(f"line {i}")
    assert await dave.end_input() == 0  # EOF: waits for the acks, then leaves
    async with ChatClient(stack.url(), c, lambda: token("eve", c)) as eve:
        page = await eve.history()
    assert [(m.author.id, m.content) for m in page.messages] == [
        ("dave", f"line {i}") for i in range(5)
    ]


async def test_a_refused_token_or_bad_arguments_end_the_command_with_an_error(
    stack: Stack, terminal: Callable[..., Awaitable[Terminal]], tmp_path: Path
) -> None:
    c = ctx()
    wrong_room = token("mallory", "another-course")
    refused = await terminal("--context", c, "--url", base_url(stack), "--token", wrong_room)
    assert await asyncio.wait_for(refused.proc.wait(), T(20)) == 1
    assert "4403" in await refused.stderr()

    both = await terminal("--context", c, "--token", wrong_room, "--sub", "x")
    assert await asyncio.wait_for(both.proc.wait(), T(20)) == 2
    assert "not both" in await both.stderr()

    unset = {"AG_JWT_SECRET": ""}  # and no secret file in the data dir: nothing to mint with
    no_secret = await terminal("--context", c, "--sub", "x", "--data-dir", str(tmp_path), env=unset)
    assert await asyncio.wait_for(no_secret.proc.wait(), T(20)) == 2
    assert "AG_JWT_SECRET" in await no_secret.stderr()
