"""Exceptions raised by the client, with one root and one close-code map."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AtomicGuideError",
    "AuthError",
    "ConnectionClosed",
    "Disconnected",
    "ForbiddenError",
    "FrameTooLargeError",
    "QueueFull",
    "ReconnectFailed",
    "ServerError",
    "error_for_close",
    "is_terminal_close",
]


class AtomicGuideError(Exception):
    """Root of every exception this package raises."""


class ServerError(AtomicGuideError):
    """The server answered a request with an ``error`` frame.

    ``code`` is the protocol error code (``invalid_message``, ``forbidden``,
    ``version_mismatch``, ``unavailable``, ...), ``message`` the human text from the
    envelope's ``error`` field and ``data`` the whole ``data`` object of the frame.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        data: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.data: dict[str, Any] = dict(data or {})
        self.request_id = request_id


class QueueFull(AtomicGuideError):
    """``send()`` was refused because ``max_pending`` requests are already unacknowledged.

    The overflow policy is *refuse the newcomer*: nothing already queued is dropped, and
    the caller decides whether to wait for earlier sends and retry.
    """


class ConnectionClosed(AtomicGuideError):
    """The client is closed for good: no more frames will be sent or received.

    ``code`` is the WebSocket close code that ended it (1000 for ``close()``).
    """

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Disconnected(AtomicGuideError):
    """A request bound to one connection (refresh, automatic rejoin) lost that connection.

    Transient: the client reconnects on its own; only internal requests see this.
    """


class AuthError(ConnectionClosed):
    """Close 4401: the token is missing, invalid or expired. Not retried with the same token."""


class ForbiddenError(ConnectionClosed):
    """Close 4403: the token is valid but not for this context or role."""


class FrameTooLargeError(ConnectionClosed):
    """Close 1009: the server refused oversize frames repeatedly."""


class ReconnectFailed(ConnectionClosed):
    """The backoff policy's ``max_attempts`` ran out; ``__cause__`` holds the last failure."""


_TERMINAL: dict[int, type[ConnectionClosed]] = {
    4401: AuthError,
    4403: ForbiddenError,
    1009: FrameTooLargeError,
}


def is_terminal_close(code: int) -> bool:
    """Close codes after which docs/protocol.md says not to reconnect."""
    return code == 1000 or code in _TERMINAL


def error_for_close(code: int, reason: str = "") -> ConnectionClosed:
    """The exception that a close with ``code`` ends the client with."""
    return _TERMINAL.get(code, ConnectionClosed)(code, reason)
