"""Prometheus metrics of the chat service (served on AG_METRICS_PORT when set). Commands and
append latency are the command worker's (``ag_commands_total``, ``ag_append_seconds``)."""

from __future__ import annotations

from prometheus_client import Gauge

CONSUMER_PENDING = Gauge("ag_chat_consumer_pending", "Commands waiting in the chat consumer")
ROOMS = Gauge("ag_chat_rooms", "Rooms held in memory")
