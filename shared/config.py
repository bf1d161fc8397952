"""Typed settings, read once from ``AG_``-prefixed environment variables.

Precedence: defaults < environment < explicit overrides (CLI flags). A bad value raises
``ConfigError`` naming the variable, so a process stops at start rather than misbehaving later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Settings", "load_settings"]

PREFIX = "AG_"


class ConfigError(ValueError):
    """A setting has a value the process cannot run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("./.data")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    # Browser side: the demo page at /demo/ (off unless asked for; `atomic-guide up` asks) and
    # where the JavaScript client and the demo's files are (default: this checkout)
    demo: bool = False
    web_root: Path | None = None
    nats_url: str | None = None
    # JWT
    jwt_secret: str | None = None
    jwt_public_key: Path | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: float = 0.0
    # Connections and frames
    auth_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 60.0
    max_frame_bytes: int = 65536
    outbound_queue: int = 1024
    # Presence, typing and cursor frames may wait this long to share a socket write (0: no wait)
    lazy_flush_ms: float = 20.0
    # permessage-deflate costs a compression per frame per socket on fan-out; chat frames are small
    ws_compression: bool = False
    # Rate limits (sliding 60 s windows)
    rate_connections_per_minute: int = 10
    rate_frames_per_minute: int = 100
    rate_broadcasts_per_minute: int = 1000
    trusted_proxies: tuple[str, ...] = ()
    allowed_origins: tuple[
        str, ...
    ] = ()  # browser origins besides the gateway's own; () = loopback
    # Chat
    typing_ttl_s: float = 6.0
    recovery_max: int = 1000
    dedup_window_s: float = 120.0
    command_timeout_s: float = 5.0
    # The chat service keeps the newest messages of the rooms in use; the rest is read from the log
    chat_cache_rooms: int = 1000  # rooms in memory at most (least recently used leave first)
    chat_recent_messages: int = 100  # newest messages a room in memory keeps
    # After start, rooms of the log with no snapshot are built from the log and saved
    chat_snapshot_backfill: bool = True
    # Analytics and collaboration
    metrics_window_s: int = 900
    doc_max_bytes: int = 1048576
    snapshot_every: int = 100  # a DocumentSnapshot event every N document versions
    collab_history: int = 1000  # operations a document keeps for transforming stale edits
    # Analytics aggregator: events per DuckDB transaction, periodic recompute, ad-hoc SQL
    analytics_batch: int = 20000
    analytics_linger_ms: float = 25.0  # a live batch waits this long for more (fewer commits)
    # While events keep coming, live commits start at least this far apart (~3 ms of CPU each)
    analytics_commit_interval_ms: float = 100.0
    metrics_tick_s: float = 5.0
    query_timeout_s: float = 30.0
    query_max_rows: int = 10000
    # NATS server (embedded) durability: "always" fsyncs before every ack
    nats_sync_interval: str = "always"
    stream_replicas: int = 1  # 3 on a NATS cluster
    # Scale-out: commands are partitioned (fixed when the streams are provisioned; every process
    # must agree) and workers hold partitions by leases this long, renewed well before they lapse
    partitions: int = 16
    lease_s: float = 3.0
    worker_id: str = ""  # default: host and pid
    # Presence: gateways announce their sockets this often; silent gateways expire after 3x
    heartbeat_s: float = 5.0
    # Logging
    log_format: str = "json"
    log_level: str = "info"
    # Metrics port for non-gateway services (0 = disabled)
    metrics_port: int = 0

    @property
    def nats_servers(self) -> list[str]:
        if not self.nats_url:
            raise ConfigError("AG_NATS_URL is not set and no embedded server was started")
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_POSITIVE = {
    "gateway_port",
    "auth_timeout_s",
    "ping_interval_s",
    "ping_timeout_s",
    "max_frame_bytes",
    "outbound_queue",
    "rate_connections_per_minute",
    "rate_frames_per_minute",
    "rate_broadcasts_per_minute",
    "typing_ttl_s",
    "recovery_max",
    "dedup_window_s",
    "command_timeout_s",
    "chat_cache_rooms",
    "chat_recent_messages",
    "metrics_window_s",
    "doc_max_bytes",
    "snapshot_every",
    "collab_history",
    "analytics_batch",
    "metrics_tick_s",
    "query_timeout_s",
    "query_max_rows",
    "heartbeat_s",
    "stream_replicas",
    "partitions",
    "lease_s",
}
_CHOICES = {
    "log_format": {"json", "console"},
    "log_level": {"debug", "info", "warning", "error"},
}
_ALGORITHMS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}


def _convert(name: str, kind: Any, raw: str) -> Any:
    text = raw.strip()
    if kind in ("int", int):
        return int(text)
    if kind in ("bool", bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError("not a boolean (true/false)")
    if kind in ("float", float):
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        return value
    if kind in ("Path", "Path | None"):
        return Path(text) if text else None
    if kind in ("str | None",):
        return text or None
    if kind == "tuple[str, ...]":
        return tuple(p.strip() for p in text.split(",") if p.strip())
    return text


def _validate(s: Settings) -> None:
    for name in _POSITIVE:
        if getattr(s, name) <= 0:
            raise ConfigError(f"{PREFIX}{name.upper()} must be positive, got {getattr(s, name)!r}")
    if not 0 <= s.metrics_port < 65536 or s.gateway_port >= 65536:
        raise ConfigError(f"{PREFIX}GATEWAY_PORT / {PREFIX}METRICS_PORT must be a TCP port")
    for name in (
        "jwt_leeway_s",
        "analytics_linger_ms",
        "analytics_commit_interval_ms",
        "lazy_flush_ms",
    ):
        if getattr(s, name) < 0:
            raise ConfigError(f"{PREFIX}{name.upper()} must not be negative")
    for name, allowed in _CHOICES.items():
        if getattr(s, name) not in allowed:
            raise ConfigError(f"{PREFIX}{name.upper()} must be one of {sorted(allowed)}")
    bad = [a for a in s.jwt_algorithms if a not in _ALGORITHMS]
    if bad or not s.jwt_algorithms:
        raise ConfigError(f"{PREFIX}JWT_ALGORITHMS has unsupported algorithms: {bad or 'none'}")
    for entry in s.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"{PREFIX}TRUSTED_PROXIES has a bad entry {entry!r}") from None
    if s.nats_sync_interval != "always" and not s.nats_sync_interval[:-1].isdigit():
        raise ConfigError(f"{PREFIX}NATS_SYNC_INTERVAL must be 'always' or a duration like '2m'")


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``env`` (default ``os.environ``), then apply non-None overrides."""
    source = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        var = PREFIX + f.name.upper()
        if var in source:
            try:
                values[f.name] = _convert(f.name, f.type, source[var])
            except ValueError as exc:
                raise ConfigError(f"{var}={source[var]!r} is not valid: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = Settings(**values)
    except TypeError as exc:  # an unknown override name: a programming error, say so plainly
        raise ConfigError(str(exc)) from None
    _validate(settings)
    return settings
