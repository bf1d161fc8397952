"""The wire timestamp format: ISO 8601 UTC, exactly three fractional digits, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_ts", "parse_ts", "now_ms", "ms_to_ts"]


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def ms_to_ts(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


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
    return int(dt.timestamp() * 1000)
