"""Which browser origins may open a socket or post events (sans-I/O).

A browser sends ``Origin`` with every WebSocket upgrade and cross-site ``POST``; a page on
another site must not ride on a user's tokens or cookies (cross-site WebSocket hijacking). So:
requests without ``Origin`` (servers, the SDK, command-line clients) pass; the gateway's own
origin (``Origin`` naming the ``Host`` the request was sent to) passes; then
``AG_ALLOWED_ORIGINS``: when unset, loopback origins (``http(s)://localhost|127.0.0.1|[::1]``, any
port) for development; when set, exactly the origins it lists, or every origin with ``*`` (only
ever by choice). ``null`` (sandboxed frames, ``file:``) passes only if listed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["OriginPolicy"]

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _norm(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class OriginPolicy:
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.listed = frozenset(_norm(o) for o in allowed if o.strip() and o.strip() != "*")
        self.loopback = not allowed  # the development default

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True
        o = _norm(origin)
        if o in self.listed:
            return True
        try:
            parts = urlsplit(o)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        if host is not None and parts.netloc == host.strip().lower():
            return True  # same origin: a page the gateway itself serves
        return self.loopback and parts.hostname in _LOOPBACK
