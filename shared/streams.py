"""The streams every service relies on, created or updated idempotently.

Provisioning is normally done once (`atomic-guide provision`, compose's one-shot, `up`), but a
service that finds a stream gone (a memory stream after a NATS restart) re-creates it with the same
configuration rather than waiting for an operator.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared import subjects

__all__ = ["stream_configs", "ensure_streams"]


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
    for cfg in stream_configs(replicas, dedup_window_s):
        assert cfg.name is not None
        try:
            await js.stream_info(cfg.name)
        except NotFoundError:
            await js.add_stream(cfg)
        else:
            await js.update_stream(cfg)
