"""Prometheus metrics of the gateway (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("ag_gateway_connections", "Open WebSocket connections", ["endpoint"])
CONNECTIONS_TOTAL = Counter(
    "ag_gateway_accepted_connections", "WebSocket connections accepted", ["endpoint"]
)
REJECTED = Counter("ag_gateway_rejected_total", "Upgrades refused before accept", ["reason"])
FRAMES_IN = Counter("ag_gateway_frames_in_total", "Client frames received", ["endpoint", "type"])
FRAMES_OUT = Counter("ag_gateway_frames_out_total", "Frames sent to clients", ["endpoint"])
ERRORS = Counter("ag_gateway_errors_total", "Error frames sent, by code", ["code"])
CLOSES = Counter("ag_gateway_closes_total", "Connections closed, by close code", ["code"])
AUTH_FAILURES = Counter("ag_gateway_auth_failures_total", "Failed authentications", ["reason"])
COMMAND_LATENCY = Histogram(
    "ag_gateway_command_seconds",
    "Time from publishing a command to its durable result",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BROADCAST_FANOUT = Histogram(
    "ag_gateway_broadcast_fanout",
    "Sockets one broadcast frame was written to",
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000),
)
ORDER = Counter(
    "ag_gateway_chat_order_total",
    "Chat message frames kept in order: dropped (old), filled from the log, broken (1012)",
    ["outcome"],
)
