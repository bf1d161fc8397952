"""What the endpoints share in one gateway: settings, the bus, fan-out, commands, heartbeats."""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.commands import CommandClient
from services.gateway.fanout import FanOut
from services.gateway.heartbeat import Heartbeats
from shared.bus.port import Bus
from shared.config import Settings

__all__ = ["Parts"]


@dataclass(frozen=True, slots=True)
class Parts:
    settings: Settings
    bus: Bus
    fanout: FanOut
    commands: CommandClient
    heartbeats: Heartbeats
