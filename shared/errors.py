"""One error root and the one map from errors to protocol codes and close codes."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AGError",
    "CLOSE_NORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_UNAUTHORIZED",
    "CLOSE_FORBIDDEN",
    "CLOSE_AUTH_TIMEOUT",
    "CODES",
]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008  # rate limit exceeded, as the reference shows
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012  # the stream cannot be kept whole: reconnect with lastSeq
CLOSE_TRY_AGAIN = 1013  # outbound queue overflow: the client reads too slowly
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_AUTH_TIMEOUT = 4408

CODES = frozenset(
    {
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "unauthenticated",
        "forbidden",
        "rate_limited",
        "too_large",
        "not_found",
        "version_mismatch",
        "token_expired",
        "unavailable",
        "internal",
    }
)


class AGError(Exception):
    """A refusal the client should hear about: protocol ``code``, human ``message``, extra ``data``.

    ``close`` is the WebSocket close code to use after the error frame, or None to keep the
    connection open.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        data: dict[str, Any] | None = None,
        close: int | None = None,
    ) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}
        self.close = close

    def payload(self) -> dict[str, Any]:
        return {"code": self.code, **self.data}


def invalid(message: str) -> AGError:
    return AGError("invalid_message", message)
