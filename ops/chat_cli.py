"""``atomic-guide chat``: an interactive terminal chat in one context, over the Python client SDK.

Prints the room's last messages, then every message, join, leave and typing notice as it
arrives, and sends each line typed on stdin as a message (``/quit`` or end of input leaves).
Without ``--token`` it mints dev tokens with the configured secret, like ``atomic-guide token``:
a fresh one whenever the SDK asks (at every connect and before the old one expires).

Stdin is read by a daemon thread that hands lines to the event loop: ``connect_read_pipe``
would not work for a regular file or every kind of terminal, and a thread blocked in
``readline`` must not keep the process alive after ``/quit``.

The SDK (``clients/python``, package ``atomic_guide_client``) is imported only when the command
runs, so the rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from atomic_guide_client import ChatClient, ChatMessage
    from atomic_guide_client._dispatch import Frame

__all__ = ["format_frame", "register", "run_chat"]

DEFAULT_URL = "ws://127.0.0.1:{port}"
MAX_HISTORY = 100  # the server's largest history page
SEND_DRAIN_S = 30.0  # at end of input, how long queued messages may take to be acknowledged


def register(sub: Any) -> None:
    """Add ``chat`` to the ``atomic-guide`` subcommands."""
    ch = sub.add_parser(
        "chat",
        help="interactive chat in one context (each line on stdin is sent)",
        description="Shows the room's last messages, prints what arrives (messages, joins,"
        " leaves, typing) and sends each line typed on stdin. /quit or end of input leaves.",
    )
    ch.add_argument("--context", required=True, help="the context (room) to enter")
    ch.add_argument("--url", help="gateway URL (default ws://127.0.0.1:<AG_GATEWAY_PORT>)")
    who = ch.add_argument_group("identity: --sub [--name] [--role] mints a dev token; or --token")
    who.add_argument("--sub", help="user id of the dev token")
    who.add_argument("--name", help="display name of the dev token")
    who.add_argument("--role", action="append", choices=["learner", "instructor", "admin"])
    who.add_argument("--token", help="a JWT to use as is (no refresh)")
    ch.add_argument(
        "--history", type=int, default=20, metavar="N", help="messages shown at start (default 20)"
    )
    ch.add_argument("--connect-timeout", type=float, default=30.0, metavar="S", help="default 30 s")
    ch.add_argument("--data-dir", type=Path, help="data dir (AG_DATA_DIR): secret, port")
    ch.set_defaults(func=cmd_chat)


def _fail(message: str) -> int:
    print(f"atomic-guide chat: {message}", file=sys.stderr)
    return 2


def cmd_chat(args: argparse.Namespace) -> int:
    from ops.stack import resolve_settings
    from shared.auth import mint_token

    if args.token and (args.sub or args.name or args.role):
        return _fail("give either --token or --sub/--name/--role, not both")
    if not args.token and not args.sub:
        return _fail("give --sub (a dev token is minted) or --token")
    if not 0 <= args.history <= MAX_HISTORY:
        return _fail(f"--history must be 0-{MAX_HISTORY}")
    try:
        import atomic_guide_client  # noqa: F401
    except ImportError:
        return _fail("the Python client SDK is missing: pip install -e clients/python")
    settings = resolve_settings(data_dir=args.data_dir)
    url = args.url or DEFAULT_URL.format(port=settings.gateway_port)

    def minted() -> str:
        return mint_token(
            settings,
            sub=args.sub,
            name=args.name,
            contexts=[args.context],
            roles=args.role or ["learner"],
            ttl=3600,
            now=time.time(),
        )

    provider: str | Callable[[], str] = args.token or minted
    if not args.token:
        minted()  # fail now (ConfigError: no secret) rather than inside the client
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show an emoji
    try:
        return asyncio.run(
            run_chat(
                url,
                args.context,
                provider,
                history=args.history,
                connect_timeout=args.connect_timeout,
            )
        )
    except KeyboardInterrupt:
        return 130


# --- the session -----------------------------------------------------------------------------
async def run_chat(
    url: str,
    context: str,
    token_provider: str | Callable[[], str],
    *,
    history: int = 20,
    connect_timeout: float = 30.0,
    lines: asyncio.Queue[str | None] | None = None,
    out: TextIO | None = None,
) -> int:
    """Chat until end of input or ``/quit`` (0), or until the server ends the session (1).

    ``lines``: where typed lines arrive (``None`` = end of input); default: stdin.
    """
    from atomic_guide_client import AtomicGuideError, ChatClient, ConnectionClosed

    stream = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    if lines is None:
        lines = asyncio.Queue()
        _start_stdin_reader(asyncio.get_running_loop(), lines)
    chat = ChatClient(url, context, token_provider)
    try:
        try:
            async with asyncio.timeout(connect_timeout):
                info = await chat.connect()
        except TimeoutError:
            print(f"atomic-guide chat: could not connect to {chat.url}", file=sys.stderr)
            return 1
        except ConnectionClosed as exc:
            print(f"atomic-guide chat: {exc}", file=sys.stderr)
            return 1
        try:
            shown = (await chat.history(limit=history)).messages if history else []
        except AtomicGuideError as exc:  # e.g. `unavailable`: chat on without the backlog
            say(f"! no history: {exc}")
            shown = []
        for message in shown:
            say(format_message(message))
        say(
            f"── {info.username} in {context}: {len(shown)} earlier messages shown."
            " Type a message and press Enter; /quit or end of input leaves. ──"
        )
        after = shown[-1].seq if shown else 0
        printer = asyncio.create_task(_print_frames(chat, after, say))
        sender = asyncio.create_task(_send_lines(chat, lines, say))
        await asyncio.wait({printer, sender}, return_when=asyncio.FIRST_COMPLETED)
        if printer.done():  # the server ended the session (4401, 4403, ...)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            error = printer.exception()
            print(f"atomic-guide chat: {error or 'connection closed'}", file=sys.stderr)
            return 1
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await printer
        return 0
    finally:
        await chat.close()


async def _print_frames(chat: ChatClient, after_seq: int, say: Callable[[str], None]) -> None:
    from atomic_guide_client.frames import ConnectedFrame, MessageFrame

    connects = 0
    async for frame in chat:
        if isinstance(frame, MessageFrame) and frame.data.seq <= after_seq:
            continue  # already shown with the history
        if isinstance(frame, ConnectedFrame):
            connects += 1
            if connects > 1:
                say("* reconnected")
            continue
        text = format_frame(frame)
        if text is not None:
            say(text)


async def _send_lines(
    chat: ChatClient, lines: asyncio.Queue[str | None], say: Callable[[str], None]
) -> None:
    """Send each line; at the end wait (bounded) until every one is acknowledged."""
    from atomic_guide_client import AtomicGuideError

    async def send(text: str) -> None:
        try:
            await chat.send_message(text)
        except AtomicGuideError as exc:
            say(f"! not sent ({exc}): {text}")

    # Requests are queued in call order and re-sent in that order after a reconnect, so
    # sending without waiting for each ack keeps the room's order of this user's lines.
    pending: set[asyncio.Task[None]] = set()
    while (line := await lines.get()) is not None:
        if line.strip() == "/quit":
            break
        if line.strip():
            task = asyncio.create_task(send(line))
            pending.add(task)
            task.add_done_callback(pending.discard)
    if pending:
        _, late = await asyncio.wait(pending, timeout=SEND_DRAIN_S)
        for task in late:
            task.cancel()


def _start_stdin_reader(
    loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None], stream: TextIO = sys.stdin
) -> None:
    def read() -> None:
        try:
            for raw in stream:
                loop.call_soon_threadsafe(lines.put_nowait, raw.rstrip("\r\n"))
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except RuntimeError:
            pass  # the loop is closed: the session is over

    threading.Thread(target=read, name="stdin-reader", daemon=True).start()


# --- formatting --------------------------------------------------------------------------------
def _clock(timestamp: str) -> str:
    try:
        return (
            datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
            .astimezone()
            .strftime("%H:%M:%S")
        )
    except ValueError:
        return "--:--:--"


def format_message(message: ChatMessage) -> str:
    """``[12:00:01] Alice: hello``; continuation lines of a multi-line message indented."""
    head = f"[{_clock(message.timestamp)}] {message.author.name or message.author.id}: "
    return head + message.content.replace("\n", "\n" + " " * len(head))


def format_frame(frame: Frame) -> str | None:
    """The line to print for a server frame, or ``None`` for frames not worth a line."""
    from atomic_guide_client.frames import (
        ErrorFrame,
        MessageFrame,
        PresenceFrame,
        RecoveredFrame,
        TypingFrame,
        UserJoinedFrame,
        UserLeftFrame,
    )

    match frame:
        case MessageFrame():
            return format_message(frame.data)
        case UserJoinedFrame():
            return f"* {frame.data.username or frame.data.user_id} joined"
        case UserLeftFrame():
            return f"* {frame.data.username or frame.data.user_id} left"
        case TypingFrame() if frame.data.is_typing:
            return f"* {frame.data.username or frame.data.user_id} is typing…"
        case PresenceFrame():
            names = ", ".join(u.username or u.user_id for u in frame.data.users)
            return f"* online: {names}"
        case RecoveredFrame() if frame.data.count or frame.data.truncated:
            return "* caught up on messages missed while disconnected"
        case ErrorFrame():
            return f"! {frame.code}: {frame.error or ''}".rstrip()
    return None
