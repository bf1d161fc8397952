"""Python client for the Atomic Guide realtime WebSocket API (see docs/protocol.md).

Three clients share one reconnecting connection core::

    ChatClient(url, context_id, token_provider, **options)
    AnalyticsClient(url, context_id, token_provider, **options)
    CollaborationClient(url, context_id, token_provider, **options)
"""

from __future__ import annotations

from ._ot import Delete, Insert, Op, utf16_len
from .analytics import METRICS, AnalyticsClient
from .backoff import Backoff
from .chat import ChatClient
from .collaboration import CollaborationClient
from .config import ClientSettings, ConnectionOptions
from .connection import Connection, State, TokenProvider
from .errors import (
    AtomicGuideError,
    AuthError,
    ConnectionClosed,
    Disconnected,
    ForbiddenError,
    FrameTooLargeError,
    QueueFull,
    ReconnectFailed,
    ServerError,
)
from .frames import ClientFrame, ServerFrame, UnknownFrame, decode_server_frame, encode
from .payloads import (
    ChatAck,
    ChatMessage,
    ConnectedInfo,
    HistoryPage,
    MetricUpdate,
    SessionJoined,
    Snapshot,
)

__all__ = [
    "METRICS",
    "AnalyticsClient",
    "AtomicGuideError",
    "AuthError",
    "Backoff",
    "ChatAck",
    "ChatClient",
    "ChatMessage",
    "ClientFrame",
    "ClientSettings",
    "CollaborationClient",
    "ConnectedInfo",
    "Connection",
    "ConnectionClosed",
    "ConnectionOptions",
    "Delete",
    "Disconnected",
    "ForbiddenError",
    "FrameTooLargeError",
    "HistoryPage",
    "Insert",
    "MetricUpdate",
    "Op",
    "QueueFull",
    "ReconnectFailed",
    "ServerError",
    "ServerFrame",
    "SessionJoined",
    "Snapshot",
    "State",
    "TokenProvider",
    "UnknownFrame",
    "decode_server_frame",
    "encode",
    "utf16_len",
]
