"""Client options: typed, validated once, with safe defaults."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from .backoff import Backoff

__all__ = ["ClientSettings", "ConnectionOptions"]


class ConnectionOptions(TypedDict, total=False):
    """Keyword options every client accepts; see :class:`ClientSettings` for meanings."""

    auth_mode: Literal["query", "message"]
    ping_interval: float
    ping_timeout: float
    refresh_margin: float | None
    backoff: Backoff
    max_pending: int
    max_inbox: int
    open_timeout: float
    frames_per_minute: int | None
    retry_unavailable: int
    connect_options: Mapping[str, Any]
    logger: logging.Logger


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """
    Attributes:
        auth_mode: ``"message"``: a first ``auth`` frame (default; keeps the token out of
            URLs and access logs). ``"query"``: ``?token=&contextId=``.
        ping_interval: seconds between application ``ping`` frames.
        ping_timeout: a socket that delivers nothing for ``ping_interval + ping_timeout``
            seconds is considered dead and replaced.
        refresh_margin: send ``refresh`` this many seconds before ``exp``; ``None``: once
            80 % of the token's lifetime has passed.
        backoff: reconnect delays (default: full jitter, base 0.5 s, cap 30 s, forever).
        max_pending: unacknowledged requests allowed; ``send`` raises ``QueueFull`` past it.
        max_inbox: frames kept for ``async for`` (drop-oldest); 0 disables iteration.
        open_timeout: seconds for the handshake plus the ``connected`` frame.
        frames_per_minute: client-side pacing under the server's per-connection frame
            limit (100/min); ``None`` turns it off.
        retry_unavailable: re-sends (same ``id``, after a backoff delay) of a request the
            server answered ``unavailable``, before its future fails with ``ServerError``.
        connect_options: extra keyword arguments for ``websockets.asyncio.client.connect``
            (``ssl``, ``additional_headers``, ``max_size``, ``close_timeout``...).
        logger: where the client logs (default ``atomic_guide_client``).
    """

    auth_mode: Literal["query", "message"] = "message"
    ping_interval: float = 25.0
    ping_timeout: float = 10.0
    refresh_margin: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    max_pending: int = 256
    max_inbox: int = 1024
    open_timeout: float = 10.0
    frames_per_minute: int | None = 90
    retry_unavailable: int = 3
    connect_options: Mapping[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("atomic_guide_client"))

    def __post_init__(self) -> None:
        if self.auth_mode not in ("query", "message"):
            raise ValueError("auth_mode must be 'query' or 'message'")
        for name in ("ping_interval", "ping_timeout", "open_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.refresh_margin is not None and self.refresh_margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        if self.max_pending < 1 or self.max_inbox < 0 or self.retry_unavailable < 0:
            raise ValueError("max_pending >= 1, max_inbox >= 0, retry_unavailable >= 0")
        if self.frames_per_minute is not None and self.frames_per_minute < 1:
            raise ValueError("frames_per_minute must be >= 1 or None")

    def websocket_options(self) -> dict[str, Any]:
        """Keyword arguments for ``connect``: a 16 MiB message limit (a 1 MiB document
        snapshot can exceed websockets' 1 MiB default once JSON-escaped), then overrides."""
        return {"max_size": 16 * 2**20, **self.connect_options}
