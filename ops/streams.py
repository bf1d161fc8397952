"""Stream provisioning and inspection for operators (definitions live in shared/streams.py)."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared import subjects
from shared.streams import ensure_streams, stream_configs

__all__ = ["stream_configs", "ensure_streams", "describe_streams"]


async def describe_streams(js: JetStreamContext) -> list[dict[str, Any]]:
    out = []
    for name in (subjects.EVENTS_STREAM, subjects.COMMANDS_STREAM):
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            out.append({"stream": name, "missing": True})
            continue
        consumers = []
        for c in await js.consumers_info(name):
            consumers.append(
                {
                    "name": c.name,
                    "pending": c.num_pending,
                    "ack_pending": c.num_ack_pending,
                    "delivered": c.delivered.stream_seq if c.delivered else 0,
                }
            )
        out.append(
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
    return out
