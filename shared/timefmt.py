"""The wire timestamp format: ISO 8601 UTC, exactly three fractional digits, ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

__all__ = ["format_ts", "parse_ts", "now_ms", "ms_to_ts"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_second: tuple[int, str] = (0, "1970-01-01T00:00:00.")  # the last second formatted


def ms_to_ts(ms: int) -> str:
    # Every frame carries a timestamp: the second is formatted once, not per frame.
    global _second
    sec, milli = divmod(ms, 1000)
    cached, prefix = _second
    if sec != cached:
        prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second = (sec, prefix)
    return f"{prefix}{milli:03d}Z"


def format_ts(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_ts(value: str) -> int:
    """Parse an ISO 8601 timestamp (any offset, ``Z`` allowed) to epoch milliseconds.

    A timestamp without an offset is taken as UTC. Raises ``ValueError``.
    """
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # Integer arithmetic: float seconds × 1000 turned .051 into .050 for some instants.
    return (dt - _EPOCH) // _MS
