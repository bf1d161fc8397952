"""Keepalive on the wire: idle sockets are pinged (one gateway timer for all of them), a peer
that answers stays, a peer that stays silent is closed with 1011."""

from __future__ import annotations

import asyncio

import pytest

from ops.bench.wsload import OP_PONG, LoadSocket, open_socket
from tests.conftest import T
from tests.helpers import token

pytestmark = pytest.mark.integration


class _Peer(LoadSocket):
    """Counts the pings it answers; a mute one answers none."""

    mute = False
    pongs = 0
    enough: asyncio.Future[None] | None = None

    def send(self, frame: bytes) -> None:
        if frame[0] & 0x0F == OP_PONG:
            if self.mute:
                return
            self.pongs += 1
            if self.pongs >= 3 and self.enough is not None and not self.enough.done():
                self.enough.set_result(None)
        super().send(frame)


async def _open(url: str, mute: bool) -> _Peer:
    sock = await open_socket(url, lambda s, p: None, kind=_Peer)
    sock.mute = mute
    sock.enough = asyncio.get_running_loop().create_future()
    return sock


async def test_pings_keep_an_answering_peer_and_close_a_silent_one(make_stack) -> None:
    stack = await make_stack(env={"AG_PING_INTERVAL_S": "0.5", "AG_PING_TIMEOUT_S": "1"})
    url = stack.url(token=token("a", "c1"), contextId="c1")
    answering = await _open(url, mute=False)
    silent = await _open(url, mute=True)
    try:
        assert await asyncio.wait_for(silent.closed, T(15)) == 1011
        assert answering.enough is not None
        await asyncio.wait_for(answering.enough, T(15))  # three pings answered
        assert not answering.closed.done()
    finally:
        answering.close()
        silent.close()
