"""Request/reply bodies between gateways or the CLI and the analytics aggregator.

``RPC_METRICS_CURRENT`` answers the current value of metrics (a new subscriber's first values,
and ``atomic-guide replay``'s verification at a fixed ``now`` and stream position);
``RPC_ANALYTICS_QUERY`` runs one read-only SQL statement on the aggregator's DuckDB file, which
no other process can open while the aggregator holds it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from shared.schemas.frames import MetricUpdateData

__all__ = [
    "METRICS",
    "CurrentRequest",
    "CurrentReply",
    "QueryRequest",
    "QueryReply",
    "metric_update_data",
]

METRICS: tuple[str, ...] = ("activity", "engagement", "performance")
MetricName = Literal["activity", "engagement", "performance"]


class CurrentRequest(Struct, frozen=True, omit_defaults=True):
    contextIds: Annotated[list[str], Meta(min_length=1, max_length=10000)]
    metrics: list[MetricName] = msgspec.field(default_factory=lambda: list(METRICS))  # type: ignore[arg-type]
    now: int | None = None  # epoch ms; default: the aggregator's clock
    uptoSeq: int | None = None  # only events up to this stream sequence (replay verification)


class CurrentReply(Struct, frozen=True, omit_defaults=True):
    now: int = 0
    version: int = 0  # orders these values against live metric_update frames (AG-Version)
    seq: int = 0  # the aggregator's last processed stream sequence
    values: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)  # ctx -> metric -> v
    error: str | None = None


class QueryRequest(Struct, frozen=True, omit_defaults=True):
    sql: str
    maxRows: Annotated[int, Meta(ge=1)] | None = None


class QueryReply(Struct, frozen=True, omit_defaults=True):
    columns: list[str] = msgspec.field(default_factory=list)
    types: list[str] = msgspec.field(default_factory=list)
    rows: list[list[Any]] = msgspec.field(default_factory=list)
    truncated: bool = False
    error: str | None = None
    code: str | None = None  # "refused" (not a read-only statement) | "failed" | "timeout"


def metric_update_data(metric: str, value: dict[str, Any], timestamp: str) -> dict[str, Any]:
    """The ``data`` of a server ``metric_update`` frame (``MetricUpdateData``) as JSON values."""
    out: dict[str, Any] = msgspec.to_builtins(MetricUpdateData(metric, value, timestamp))
    return out
