"""Commands from gateways to services, their results, and the RPC bodies between them."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from shared.schemas.events import dedup_key
from shared.schemas.frames import MessageData, ParticipantData, UserData

__all__ = [
    "Origin",
    "PostMessage",
    "CommandResult",
    "HistoryRequest",
    "HistoryReply",
    "PresenceChange",
    "PresenceReply",
    "GatewayHeartbeat",
    "EditCommand",
    "SessionMember",
    "CollabJoin",
    "CollabLeave",
    "CollabSnapshotRequest",
    "CollabOpen",
    "CollabClose",
    "CollabRequest",
    "CollabReply",
    "CollabHeartbeat",
    "command_key",
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
    messages: list[MessageData]
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
    users: list[UserData]


class GatewayHeartbeat(Struct, frozen=True):
    gatewayId: str
    connections: list[Connection]
    final: bool = False  # the gateway is shutting down: drop its connections now
    seq: int = 0


class AnalyticsWatch(Struct, frozen=True):
    """The contexts one gateway has analytics sockets in (sent with every heartbeat): the
    aggregator computes live metrics for these only."""

    gatewayId: str
    contexts: list[str]
    final: bool = False


# --- collaboration -------------------------------------------------------------------------------
# RPC bodies (``RPC_COLLAB``) are MessagePack, not JSON: a reply holds a whole document (up to
# AG_DOC_MAX_BYTES of UTF-8), and JSON escapes of control characters could make that six times
# larger than the NATS payload limit. MessagePack stores the text as its UTF-8 bytes.
class EditCommand(Struct, frozen=True, tag="collab_edit"):
    """An ``edit`` frame on its way to the collaboration service (work queue, like PostMessage)."""

    requestId: str
    contextId: str
    sessionId: str
    origin: Origin
    operation: str  # "insert" | "delete"
    position: int
    version: int
    content: str | None = None
    length: int | None = None
    clientId: str | None = None
    deadline: int = 0  # epoch ms; past it the service drops the command unapplied


def command_key(cmd: PostMessage | EditCommand) -> tuple[str, str]:
    """The dedup key of a command (``dedup_key``): its client frame id, else its request id."""
    key = dedup_key(cmd.origin.userId, cmd.clientId, cmd.requestId)
    assert key is not None  # every command has a request id
    return key


class SessionMember(Struct, frozen=True, array_like=True):
    """One connection in one collaboration session."""

    contextId: str
    sessionId: str
    connectionId: str
    userId: str
    userName: str
    role: str  # "participant" | "observer" | "host"


class CollabJoin(Struct, frozen=True, tag="join"):
    gatewayId: str
    member: SessionMember
    seq: int = 0  # the gateway's presence counter, as in PresenceChange


class CollabLeave(Struct, frozen=True, tag="leave"):
    gatewayId: str
    member: SessionMember
    seq: int = 0


class CollabSnapshotRequest(Struct, frozen=True, tag="snapshot"):
    contextId: str
    sessionId: str


class CollabOpen(Struct, frozen=True, tag="open"):
    """A collaboration socket opened (before it joins any session): the user is online in the
    context (analytics' ``onlineUsers``)."""

    gatewayId: str
    conn: Connection
    seq: int = 0


class CollabClose(Struct, frozen=True, tag="close"):
    gatewayId: str
    conn: Connection
    seq: int = 0


CollabRequest = CollabJoin | CollabLeave | CollabSnapshotRequest | CollabOpen | CollabClose


class CollabReply(Struct, frozen=True, omit_defaults=True):
    content: str = ""
    version: int = 0
    participants: list[ParticipantData] = msgspec.field(default_factory=list)
    error: str | None = None  # protocol error code
    message: str = ""


class CollabHeartbeat(Struct, frozen=True):
    """A gateway's full list of collaboration session members (the chat heartbeat's twin)."""

    gatewayId: str
    members: list[SessionMember]
    final: bool = False
    seq: int = 0
    connections: list[Connection] = msgspec.field(default_factory=list)  # every open socket
