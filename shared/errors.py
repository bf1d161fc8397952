"""One error root, and the one map from errors to protocol codes and close codes.

Code anywhere (decoders, the gateway, services, the OT core) raises a ``Refusal`` subclass that
names what went wrong, with a human message and structured ``data``; it never picks a protocol
code or a WebSocket close code. ``protocol(exc)`` is the only place that does: it walks the
exception's classes to the first one in ``_MAP``. Anything that is not a ``Refusal`` is the
server's own fault: ``internal``.

Results that cross the bus as a code (a service's ``CommandResult``) come back as the matching
class through ``from_code``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AGError",
    "AuthTimeout",
    "BadToken",
    "CLOSE_AUTH_TIMEOUT",
    "CLOSE_FORBIDDEN",
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNAUTHORIZED",
    "CODES",
    "Forbidden",
    "Internal",
    "InvalidJson",
    "InvalidMessage",
    "NotAllowedHere",
    "NotFound",
    "Protocolled",
    "RateLimited",
    "Refusal",
    "ServiceUnavailable",
    "TokenExpired",
    "TooLarge",
    "TooManyFrames",
    "Unauthenticated",
    "UnknownType",
    "VersionMismatch",
    "from_code",
    "protocol",
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


class Refusal(Exception):
    """Something the client should hear about: a human ``message`` and extra ``data``.

    Raise a subclass: ``InvalidMessage("why")``. The root also takes the older form
    ``Refusal(code, message, data=...)`` and then builds the subclass for that code.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Refusal:
        if cls is Refusal and len(args) >= 2 and isinstance(args[1], str):
            return super().__new__(_BY_CODE.get(args[0], Internal))
        return super().__new__(cls)

    def __init__(self, *args: Any, data: Mapping[str, Any] | None = None) -> None:
        if len(args) >= 2 and isinstance(args[1], str):  # (code, message): the older form
            args = args[1:]
        message = str(args[0]) if args else ""
        if len(args) > 1 and data is None:
            data = args[1]
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = dict(data or {})

    @property
    def code(self) -> str:
        return protocol(self).code


AGError = Refusal  # the package's root error, by its older name


class InvalidJson(Refusal):
    """The frame is not JSON."""


class InvalidMessage(Refusal):
    """JSON, but not a frame of this protocol (schema, types, ranges, state)."""


class UnknownType(Refusal):
    """A type this endpoint does not take from clients."""


class Unauthenticated(Refusal):
    """No valid token yet for what the frame asks (the connection stays)."""


class BadToken(Unauthenticated):
    """The token presented to open the connection is not valid: it closes."""


class TokenExpired(Refusal):
    """The connection's token expired and was not refreshed."""


class AuthTimeout(Unauthenticated):
    """No ``auth`` frame in time."""


class Forbidden(Refusal):
    """Valid token, not allowed to do this (the connection stays)."""


class NotAllowedHere(Forbidden):
    """Valid token, not for this context or endpoint: the connection closes."""


class RateLimited(Refusal):
    """Over a limit that refuses this frame only."""


class TooManyFrames(RateLimited):
    """Over the connection's frame limit: it closes."""


class TooLarge(Refusal):
    """Over a size limit."""


class NotFound(Refusal):
    """Names something that is not there."""


class VersionMismatch(Refusal):
    """A document version the server does not have (``data.version``: the current one)."""


class ServiceUnavailable(Refusal):
    """A backend did not answer: the frame was not applied; re-send it later."""


class Internal(Refusal):
    """The server's own fault."""


@dataclass(frozen=True, slots=True)
class Protocolled:
    """An error as the protocol says it: code, human text, data, and the close it calls for."""

    code: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    close: int | None = None

    def payload(self) -> dict[str, Any]:
        return {"code": self.code, **self.data}


# class -> (protocol code, close code or None). More specific classes come first in an MRO.
_MAP: dict[type[Refusal], tuple[str, int | None]] = {
    InvalidJson: ("invalid_json", None),
    InvalidMessage: ("invalid_message", None),
    UnknownType: ("unknown_type", None),
    BadToken: ("unauthenticated", CLOSE_UNAUTHORIZED),
    AuthTimeout: ("unauthenticated", CLOSE_AUTH_TIMEOUT),
    Unauthenticated: ("unauthenticated", None),
    TokenExpired: ("token_expired", CLOSE_UNAUTHORIZED),
    NotAllowedHere: ("forbidden", CLOSE_FORBIDDEN),
    Forbidden: ("forbidden", None),
    TooManyFrames: ("rate_limited", CLOSE_POLICY),
    RateLimited: ("rate_limited", None),
    TooLarge: ("too_large", None),
    NotFound: ("not_found", None),
    VersionMismatch: ("version_mismatch", None),
    ServiceUnavailable: ("unavailable", None),
    Internal: ("internal", None),
}
CODES = frozenset(code for code, _ in _MAP.values())
# A code that crossed the bus back to its class (the one that closes nothing).
_BY_CODE: dict[str, type[Refusal]] = {}
for _cls, (_code, _close) in _MAP.items():
    if _close is None:
        _BY_CODE.setdefault(_code, _cls)


def protocol(exc: BaseException) -> Protocolled:
    """The one map: what the protocol calls ``exc``, and whether the connection closes."""
    if isinstance(exc, Refusal):
        for cls in type(exc).__mro__:
            hit = _MAP.get(cls)  # type: ignore[call-overload]
            if hit is not None:
                return Protocolled(hit[0], exc.message, exc.data, hit[1])
    return Protocolled("internal", "internal error")


def from_code(code: str, message: str, data: Mapping[str, Any] | None = None) -> Refusal:
    """A refusal a service reported as a protocol code (its ``CommandResult.error``)."""
    return _BY_CODE.get(code, Internal)(message or code, data)
