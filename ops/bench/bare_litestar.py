"""The baseline of ``bench fanout``: a bare Litestar broadcast on uvicorn (no auth, no NATS).

Accept, join the one room, say ``connected``, and hand every text a member sends to every
member with ``send_text``; the same uvicorn WebSocket implementation as the gateway.
    python -m ops.bench.bare_litestar PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from litestar import Litestar, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

members: set[WebSocket[Any, Any, Any]] = set()


@websocket("/ws")
async def room(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    members.add(socket)
    await socket.send_text('{"type":"connected"}')
    try:
        while True:
            text = await socket.receive_text()
            for member in list(members):
                try:
                    await member.send_text(text)
                except Exception:  # that member is gone; its own handler cleans up
                    members.discard(member)
    except WebSocketDisconnect:
        pass
    finally:
        members.discard(socket)


app = Litestar([room], openapi_config=None)

if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), ws="websockets-sansio", log_level="warning"
    )
