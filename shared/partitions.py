"""Command partitions: which of P partitions an aggregate's commands land in.

The command streams carry a subject transform with NATS's ``partition(P, tokens…)`` mapping
function (``nats_streams.py``), so nats-server itself files ``ag.cmd.chat.<ctx>`` under
``ag.cmd.chat.<p>.<ctx>``. Workers own partitions, not aggregates (``shared/ownership.py``).
The services also need the same function, to tell whether they own an aggregate (presence,
collaboration reads); this module is it, in Python, and a contract test checks it against the
server. NATS hashes the selected tokens, concatenated, with 32-bit FNV-1a.
"""

from __future__ import annotations

from shared import subjects

__all__ = [
    "chat_partition",
    "collab_partition",
    "partition_of",
    "partitioned_command",
]


def partition_of(n: int, *tokens: str) -> int:
    h = 0x811C9DC5
    for tok in tokens:
        for byte in tok.encode():
            h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % n


def chat_partition(context_id: str, n: int) -> int:
    return partition_of(n, subjects.token(context_id))


def collab_partition(context_id: str, session_id: str, n: int) -> int:
    return partition_of(n, subjects.token(context_id), subjects.token(session_id))


def partitioned_command(subject: str, n: int) -> str:
    """The subject the stream's transform stores a command under (for the in-memory twin)."""
    parts = subject.split(".")
    if parts[:3] == ["ag", "cmd", "chat"] and len(parts) == 4:
        return f"ag.cmd.chat.{partition_of(n, parts[3])}.{parts[3]}"
    if parts[:3] == ["ag", "cmd", "collab"] and len(parts) == 5:
        return f"ag.cmd.collab.{partition_of(n, parts[3], parts[4])}.{parts[3]}.{parts[4]}"
    return subject
