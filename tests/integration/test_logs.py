"""What the processes log: never a token (README, "Settings")."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import Client, token, wait_until

pytestmark = pytest.mark.integration


async def test_the_gateway_logs_connections_without_their_tokens(
    make_stack: Callable[..., Any],
) -> None:
    stack = await make_stack(env={"AG_LOG_LEVEL": "info", "AG_LOG_FORMAT": "json"})
    good = token("alice", "c1")
    bad = good[:-4] + "AAAA"  # a forged signature: refused, and logged as refused
    for tok in (good, bad):
        c = await Client.connect(stack.url(contextId="c1", token=tok))
        await c.expect(("connected", "error"))
        await c.close()
    log = stack.tmp / "gateway0.log"
    wait_until(lambda: log.read_text().count("connection closed") >= 2, 10, "close lines")
    text = log.read_text()
    assert good not in text and bad not in text
    assert good.split(".")[2] not in text  # not even the signature
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    accepted = [line for line in lines if "WebSocket /api/chat/ws" in line["event"]]
    assert accepted and all("token=[redacted]" in line["event"] for line in accepted)
