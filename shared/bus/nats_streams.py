"""The two JetStream streams: their configuration, provisioning and a description for operators."""

from __future__ import annotations

from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from shared import subjects

__all__ = ["describe_streams", "ensure_streams", "stream_configs"]


def stream_configs(replicas: int = 1, dedup_window_s: float = 120.0) -> list[StreamConfig]:
    return [
        # The source of truth: kept forever, every projection rebuilds from it.
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_ALL],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            num_replicas=replicas,
            duplicate_window=dedup_window_s,
            allow_direct=True,
            allow_atomic=True,  # services append a batch of one aggregate's events at once
        ),
        # Commands wait here for their service; handled ones are removed (work queue). A command
        # lives only until its deadline (AG_COMMAND_TIMEOUT_S): past it the gateway has answered
        # `unavailable` and the service drops it. So memory storage loses nothing a client was
        # promised, and spares a second fsync per message; the event log is what is durable.
        StreamConfig(
            name=subjects.COMMANDS_STREAM,
            subjects=[subjects.COMMANDS_ALL],
            storage=StorageType.MEMORY,
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.OLD,
            max_age=3600.0,
            num_replicas=replicas,
            duplicate_window=dedup_window_s,
        ),
    ]


async def ensure_streams(
    js: JetStreamContext, replicas: int = 1, dedup_window_s: float = 120.0
) -> None:
    """Create or update the streams (idempotent; services also call it to heal)."""
    for cfg in stream_configs(replicas, dedup_window_s):
        assert cfg.name is not None
        try:
            await js.stream_info(cfg.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(cfg)
        else:
            await js.update_stream(cfg)


async def describe_streams(js: JetStreamContext) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in (subjects.EVENTS_STREAM, subjects.COMMANDS_STREAM):
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            rows.append({"stream": name, "missing": True})
            continue
        consumers: list[dict[str, Any]] = []
        for c in await js.consumers_info(name):
            consumers.append(
                {
                    "name": c.name,
                    "pending": c.num_pending,
                    "ack_pending": c.num_ack_pending,
                    "delivered": c.delivered.stream_seq if c.delivered else 0,
                }
            )
        rows.append(
            {
                "stream": name,
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "first_seq": info.state.first_seq,
                "last_seq": info.state.last_seq,
                "replicas": info.config.num_replicas,
                "consumers": consumers,
            }
        )
    return rows
