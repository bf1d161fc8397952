"""Readiness probes of the backend services: each answers a harmless request once it serves."""

from __future__ import annotations

import msgspec

from shared import subjects
from shared.bus.port import Bus, Unavailable
from shared.schemas.analytics import CurrentRequest
from shared.schemas.commands import CollabSnapshotRequest, HistoryRequest
from shared.schemas.wire import encode

__all__ = ["PROBES", "service_ready"]

_PROBE_CONTEXT = "__probe__"

# service name -> (subject, request body)
PROBES: dict[str, tuple[str, bytes]] = {
    "chat": (subjects.RPC_CHAT_HISTORY, encode(HistoryRequest(_PROBE_CONTEXT, limit=1))),
    "collaboration": (
        subjects.RPC_COLLAB,
        msgspec.msgpack.encode(CollabSnapshotRequest(_PROBE_CONTEXT, _PROBE_CONTEXT)),
    ),
    "analytics": (
        subjects.RPC_METRICS_CURRENT,
        encode(CurrentRequest(contextIds=[_PROBE_CONTEXT], metrics=["activity"])),
    ),
}


async def service_ready(bus: Bus, name: str, timeout: float = 1.0) -> bool:
    """True once ``name`` answers its probe (services without a probe count as ready)."""
    probe = PROBES.get(name)
    if probe is None:
        return True
    try:
        await bus.request(probe[0], probe[1], timeout=timeout)
    except Unavailable:
        return False
    return True
