"""The broker port (``port``), its NATS implementation (``nats``), its in-memory twin."""

from shared.bus.port import (
    Appended,
    Bus,
    BusError,
    Command,
    CommandQueue,
    Conflict,
    Entry,
    Handler,
    Leases,
    LogTail,
    Message,
    Subscription,
    Unavailable,
)

__all__ = [
    "Appended",
    "Bus",
    "BusError",
    "Command",
    "CommandQueue",
    "Conflict",
    "Entry",
    "Handler",
    "Leases",
    "LogTail",
    "Message",
    "Subscription",
    "Unavailable",
]
