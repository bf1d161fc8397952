"""JWT expiry reading and refresh scheduling, sans-I/O.

The client never verifies a token (it has no key and needs none); it only reads ``exp``
and ``iat`` from the payload to know when to send ``refresh`` (docs/protocol.md,
"Authentication"). All times are POSIX seconds; callers pass ``now``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

__all__ = ["TokenClock", "TokenTimes", "parse_server_time", "read_token_times", "refresh_delay"]

#: Without ``refresh_margin``, refresh once this share of the token's lifetime has passed.
DEFAULT_REFRESH_FRACTION = 0.8


@dataclass(frozen=True, slots=True)
class TokenTimes:
    """``exp`` and ``iat`` claims of a JWT (``None`` when absent or unreadable)."""

    expires_at: float | None
    issued_at: float | None


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _numeric(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def read_token_times(token: str) -> TokenTimes:
    """Read ``exp``/``iat`` from a compact JWS without verifying it.

    A token that is not a JWT (an opaque test token, say) yields ``TokenTimes(None, None)``:
    the client then never schedules a refresh.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return TokenTimes(None, None)
    try:
        claims = json.loads(_b64url_decode(parts[1]))
    except (ValueError, binascii.Error):
        return TokenTimes(None, None)
    if not isinstance(claims, dict):
        return TokenTimes(None, None)
    return TokenTimes(_numeric(claims.get("exp")), _numeric(claims.get("iat")))


def refresh_delay(
    *,
    expires_at: float,
    obtained_at: float,
    now: float,
    refresh_margin: float | None = None,
    fraction: float = DEFAULT_REFRESH_FRACTION,
) -> float:
    """Seconds from ``now`` until a refresh should be sent.

    With ``refresh_margin``: ``refresh_margin`` seconds before ``expires_at``. Without it:
    once ``fraction`` of the lifetime ``[obtained_at, expires_at]`` has passed
    (``obtained_at`` is the token's ``iat`` when present, else when the client got it).
    Never negative: a token already inside its refresh window is refreshed at once.
    """
    if refresh_margin is not None:
        due = expires_at - refresh_margin
    else:
        lifetime = max(0.0, expires_at - obtained_at)
        due = obtained_at + fraction * lifetime
    return max(0.0, due - now)


def parse_server_time(value: str) -> float | None:
    """POSIX seconds of an envelope timestamp like ``2026-01-05T09:30:00.123Z``."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


class TokenClock:
    """The token in force and the server's clock, as seen from the client.

    ``exp`` is judged by the server, so every deadline here is in server time, estimated
    from ``connected.serverTime`` (latency is ignored: it only makes refreshes early).
    """

    def __init__(self, refresh_margin: float | None = None) -> None:
        self.refresh_margin = refresh_margin
        self.token = ""
        self._times = TokenTimes(None, None)
        self._obtained_at = 0.0
        self._skew = 0.0

    def server_now(self, now: float) -> float:
        return now + self._skew

    def sync(self, server_time: str, now: float) -> None:
        """Estimate the server clock from a ``connected`` frame's ``serverTime``."""
        server_now = parse_server_time(server_time)
        self._skew = 0.0 if server_now is None else server_now - now

    def accept(self, token: str, now: float) -> None:
        """``token`` is in force from ``now`` (a connect or a ``refreshed`` reply)."""
        self.token = token
        self._times = read_token_times(token)
        self._obtained_at = self.server_now(now)

    def refresh_in(self, now: float) -> float | None:
        """Seconds until ``refresh`` is due; ``None`` for a token without ``exp``."""
        if self._times.expires_at is None:
            return None
        return refresh_delay(
            expires_at=self._times.expires_at,
            obtained_at=(
                self._obtained_at if self._times.issued_at is None else self._times.issued_at
            ),
            now=self.server_now(now),
            refresh_margin=self.refresh_margin,
        )

    def retry_in(self, now: float) -> float:
        """Pause before trying again after a failed refresh: a quarter of the time left,
        between 1 and 30 s."""
        expires_at = self._times.expires_at
        left = 0.0 if expires_at is None else expires_at - self.server_now(now)
        return max(1.0, min(30.0, left / 4))

    def is_fresher(self, token: str) -> bool:
        """Would ``token`` extend the session? (A provider may hand back a cached token.)"""
        if token == self.token:
            return False
        new_exp = read_token_times(token).expires_at
        old_exp = self._times.expires_at
        return new_exp is None or old_exp is None or new_exp > old_exp
