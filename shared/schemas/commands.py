"""Commands from gateways to services, their results, and the RPC bodies between them."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

__all__ = [
    "Origin",
    "PostMessage",
    "CommandResult",
    "HistoryRequest",
    "HistoryReply",
    "PresenceChange",
    "PresenceReply",
    "GatewayHeartbeat",
]


class Origin(Struct, frozen=True):
    """Where a command came from, so its result finds the socket again."""

    gatewayId: str
    connectionId: str
    userId: str
    userName: str


class PostMessage(Struct, frozen=True, tag="post_message"):
    requestId: str
    contextId: str
    origin: Origin
    content: str
    messageType: str
    clientId: str | None
    deadline: int  # epoch ms; a command not handled by then is dropped, so `unavailable` is true


class CommandResult(Struct, frozen=True, omit_defaults=True):
    requestId: str
    connectionId: str
    clientId: str | None = None
    ok: dict[str, Any] | None = None
    error: str | None = None  # protocol error code
    message: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class HistoryRequest(Struct, frozen=True):
    contextId: str
    limit: int = 50
    beforeMs: int | None = None
    beforeSeq: int | None = None
    afterSeq: int | None = None  # recovery: everything with a higher seq (up to the cap)
    cap: int = 1000


class HistoryReply(Struct, frozen=True):
    messages: list[dict[str, Any]]
    hasMore: bool = False
    truncated: bool = False
    lastSeq: int = 0


class Connection(Struct, frozen=True, array_like=True):
    contextId: str
    connectionId: str
    userId: str
    userName: str


class PresenceChange(Struct, frozen=True):
    gatewayId: str
    op: str  # "open" | "close"
    conn: Connection
    seq: int = 0  # the gateway's presence message counter (orders opens against heartbeats)


class PresenceReply(Struct, frozen=True):
    users: list[dict[str, str]]


class GatewayHeartbeat(Struct, frozen=True):
    gatewayId: str
    connections: list[Connection]
    final: bool = False  # the gateway is shutting down: drop its connections now
    seq: int = 0
