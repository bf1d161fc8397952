"""Reading the event log back: batched direct gets, and events that cannot be decoded skipped.

A projection (a chat room, a document, presence, the analytics store) must survive one bad event
in the log, or that event would poison everything after it on every rebuild. ``decode_logged``
returns None for such an event, counts it, and logs it once per stream sequence and process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from prometheus_client import Counter

from shared import subjects
from shared.logs import get_logger
from shared.schemas.events import Event, decode_event

__all__ = [
    "SKIPPED",
    "Entry",
    "LogUnavailable",
    "decode_logged",
    "last_on_subjects",
    "note_skipped",
    "read_subject",
]

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


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored message of the log: its stream sequence, subject and payload."""

    seq: int
    subject: str
    data: bytes


_DIRECT_GET = "$JS.API.DIRECT.GET.{stream}"
_GET_BATCH = 256  # messages per batched direct get (NATS >= 2.11)


async def read_subject(
    nc: NATS,
    subject: str,
    start_seq: int = 1,
    limit: int = 1_000_000,
    *,
    stream: str = subjects.EVENTS_STREAM,
    timeout: float = 5.0,
) -> list[Entry]:
    """Up to ``limit`` messages on ``subject`` (wildcards allowed) from stream sequence
    ``start_seq`` on, oldest first, read with batched direct gets: a round trip per
    ``_GET_BATCH`` messages, no consumer to create or clean up."""
    out: list[Entry] = []
    seq = max(start_seq, 1)
    while len(out) < limit:
        want = min(_GET_BATCH, limit - len(out))
        req = {"seq": seq, "next_by_subj": subject, "batch": want}
        got, pending = await _direct_batch(nc, stream, req, timeout)
        out.extend(got)
        if not got or not pending:
            break
        seq = got[-1].seq + 1
    return out


async def last_on_subjects(
    nc: NATS,
    wanted: list[str],
    *,
    stream: str = subjects.EVENTS_STREAM,
    timeout: float = 5.0,
) -> dict[str, Entry]:
    """The last message on each of ``wanted`` (subjects with none are left out)."""
    found: dict[str, Entry] = {}
    for i in range(0, len(wanted), _GET_BATCH):
        chunk = wanted[i : i + _GET_BATCH]
        got, _ = await _direct_batch(
            nc, stream, {"multi_last": chunk, "batch": len(chunk)}, timeout
        )
        for entry in got:
            found[entry.subject] = entry
    return found


class LogUnavailable(Exception):
    """The log could not be read (JetStream down, or not answering in time)."""


async def _direct_batch(
    nc: NATS, stream: str, req: dict[str, Any], timeout: float
) -> tuple[list[Entry], int]:
    """One batched direct get: the entries, and how many more match after them."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=0)
    out: list[Entry] = []
    try:
        await nc.publish(_DIRECT_GET.format(stream=stream), json.dumps(req).encode(), reply=inbox)
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":
                    return out, 0
                if status is not None:  # 204 EOB ends the batch; anything else is an error
                    if status != "204":
                        raise LogUnavailable(f"direct get: {status} {headers}")
                    return out, int(headers.get("Nats-Num-Pending", "0") or 0)
                out.append(Entry(int(headers["Nats-Sequence"]), headers["Nats-Subject"], msg.data))
    except (TimeoutError, nats.errors.Error) as exc:
        raise LogUnavailable(repr(exc)) from None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
