"""Stream provisioning and inspection for operators (the definitions live with the NATS bus)."""

from __future__ import annotations

from shared.bus.nats import describe_streams, ensure_streams, stream_configs

__all__ = ["stream_configs", "ensure_streams", "describe_streams"]
