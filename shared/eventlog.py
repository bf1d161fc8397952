"""Reading the event log back into projections: an event that cannot be decoded is skipped.

A projection (a chat room, a document, presence, the analytics store) must survive one bad event
in the log, or that event would poison everything after it on every rebuild. ``decode_logged``
returns None for such an event, counts it, and logs it once per stream sequence and process.
"""

from __future__ import annotations

import msgspec
from prometheus_client import Counter

from shared.logs import get_logger
from shared.schemas.events import Event, decode_event

__all__ = ["SKIPPED", "decode_logged", "note_skipped"]

log = get_logger(__name__)

SKIPPED = Counter(
    "ag_events_skipped_total", "Events in the log a projection could not use", ["projection"]
)
_LOGGED_MAX = 10_000  # remember this many logged sequences; beyond, a repeat may be logged again
_logged: set[tuple[str, int]] = set()


def note_skipped(projection: str, seq: int, subject: str, reason: str) -> None:
    """Count a skipped event; log it the first time this process meets it."""
    SKIPPED.labels(projection).inc()
    key = (projection, seq)
    if key in _logged:
        return
    if len(_logged) >= _LOGGED_MAX:
        _logged.clear()
    _logged.add(key)
    log.error(
        "undecodable event skipped",
        extra={"projection": projection, "seq": seq, "subject": subject, "reason": reason},
    )


def decode_logged(data: bytes, seq: int, subject: str, projection: str) -> Event | None:
    """The event at stream sequence ``seq``, or None (counted and logged) if it is not one."""
    try:
        return decode_event(data)
    except msgspec.DecodeError as exc:
        note_skipped(projection, seq, subject, str(exc))
        return None
