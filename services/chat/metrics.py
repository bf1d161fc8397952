"""Prometheus metrics of the chat service (served on AG_METRICS_PORT when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

COMMANDS = Counter("ag_chat_commands_total", "Chat commands handled, by result", ["result"])
APPEND_LATENCY = Histogram(
    "ag_chat_append_seconds",
    "JetStream publish latency of one event (until the stream's ack)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
CONSUMER_PENDING = Gauge("ag_chat_consumer_pending", "Commands waiting in the chat consumer")
ROOMS = Gauge("ag_chat_rooms", "Rooms held in memory")
